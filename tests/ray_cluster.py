"""A real local Ray cluster for tests: ``ray start --head`` with two worker CPUs, inside a private
network namespace whose only interface is loopback, so every Ray server listens on 127.0.0.1 and
nothing is reachable from outside (Ray itself binds all interfaces). The driver code runs in the same
namespace; the cluster is stopped afterwards. Needs root (``unshare -n``), as in CI."""
from __future__ import annotations

import json
import os
import shlex
import sys
import textwrap
from pathlib import Path

from netns import run_loopback_only

PORT = 6390


def run_on_local_cluster(driver_code: str, *, cpus: int = 2, timeout: float = 1500) -> dict:
    """Start a cluster, run ``driver_code`` (Python; it finds the cluster at ``$RAY_ADDRESS`` and prints
    one JSON line last), stop the cluster; the parsed JSON."""
    ray = Path(sys.executable).with_name("ray")
    script = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgedet-ray-driver-{os.getpid()}.py"
    script.write_text(textwrap.dedent(driver_code))
    shell = f"""
        set -u
        {shlex.quote(str(ray))} start --head --node-ip-address=127.0.0.1 --port={PORT} --num-cpus={cpus} \\
            --include-dashboard=false --disable-usage-stats >/dev/null || exit 90
        RAY_ADDRESS=127.0.0.1:{PORT} {shlex.quote(sys.executable)} {shlex.quote(str(script))}
        status=$?
        {shlex.quote(str(ray))} stop --force >/dev/null 2>&1
        exit $status
    """
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        result = run_loopback_only(shell, timeout=timeout, env=env)
    finally:
        script.unlink(missing_ok=True)
    assert result.returncode != 90, "ray start failed:\n" + result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
