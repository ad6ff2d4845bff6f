"""The default thread count is the cores this process may use: affinity and a real cgroup CPU quota."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks.cpu_quota import cpu_quota
from edgedet.cpu import cgroup_cpu_limit, resolve_threads, usable_cores

PROBE = ("import json\nfrom edgedet.cpu import cgroup_cpu_limit, usable_cores\n"
         "print(json.dumps({'cores': usable_cores(), 'limit': cgroup_cpu_limit()}))\n")


def _child(code: str, *, cpus: set[int] | None = None) -> dict:
    setup = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            preexec_fn=setup)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_this_process_counts_its_affinity_capped_by_its_quota():
    expected = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    if limit is not None:
        expected = min(expected, max(1, math.ceil(limit)))
    assert usable_cores() == expected


def test_pinned_process_counts_one_core():
    assert _child(PROBE, cpus={0}) == {"cores": 1, "limit": None}


@pytest.mark.parametrize(("quota", "expected"), [(0.5, 1), (1.5, 2)])
def test_cgroup_quota_caps_the_cores(quota, expected):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("this test needs a machine with at least 2 cores")
    with cpu_quota(quota) as group:
        summary = _child(group.join_command() + PROBE)
    assert summary["limit"] == pytest.approx(quota)
    assert summary["cores"] == expected


def test_backend_threads_default_to_usable_cores(onnx_exports):
    """A runtime given no thread count runs with the process's usable cores, and says so."""
    out, _ = onnx_exports
    model = out / "lite0" / "onnxruntime-fp32" / "model.onnx"
    code = ("import json\nfrom edgedet.backends import load_backend\n"
            f"b = load_backend('onnxruntime', {str(model)!r})\n"
            "print(json.dumps({'threads': b.threads, 'described': b.describe()['threads'], "
            "'intra': b.session.get_session_options().intra_op_num_threads}))\n")
    assert _child(code, cpus={0}) == {"threads": 1, "described": 1, "intra": 1}
    everything = _child(code)
    assert everything["threads"] == everything["intra"] == usable_cores()


def test_resolve_threads():
    assert resolve_threads(3) == 3
    assert resolve_threads(None) == usable_cores()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            resolve_threads(bad)
