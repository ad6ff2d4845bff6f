"""Run a shell script in a private network namespace whose only interface is loopback (``unshare -n``,
root as in CI): servers a test starts there (a Ray cluster, torchrun's rendezvous) can listen on
nothing but 127.0.0.1, whatever addresses they bind."""
from __future__ import annotations

import subprocess


def run_loopback_only(script: str, *, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``script`` (bash) with the namespace's loopback up; its completed process, output captured."""
    return subprocess.run(["unshare", "-n", "bash", "-c", "ip link set lo up\n" + script], capture_output=True,
                          text=True, timeout=timeout, env=env)
