"""The scenario benchmark runs its whole schedule for real: a cgroup CPU quota applied and lifted,
competing processes, a static and an adaptive Detector, the oracle, the table, JSON and plot. Its
figures are timings and belong to the benchmark; this checks that every phase ran as described."""
from __future__ import annotations

import json
import shutil

from benchmarks import scenario
from edgedet.cpu import usable_cores


def test_the_schedule_runs_with_a_real_quota(onnx_exports, tmp_path, capsys):
    out, _ = onnx_exports
    models = tmp_path / "models"
    for name in ("lite0/onnxruntime-int8", "lite0/onnxruntime-fp32"):
        shutil.copytree(out / name, models / name)
    status = scenario.main(["--models", str(models), "--budgets", "10000", "--phase-seconds", "0.6",
                            "--frame-size", "320x240", "--out", str(tmp_path / "out")])
    assert status == 0
    results = json.loads((tmp_path / "out" / "scenario.json").read_text())
    assert [p["name"] for p in results["schedule"]] == ["full speed", "CPU quota: half", "competing processes",
                                                       "full speed again"]
    half = max(0.5, usable_cores() / 2)
    assert [r["detector"] for r in results["runs"]] == ["static", "adaptive"]
    for run in results["runs"]:
        assert run["applied_quota"] == [None, half, None, None]  # read back from the cgroup in each phase
        assert [p["frames"] > 0 for p in run["phases"]] == [True] * 4
        # With a huge budget every frame fits and the most accurate artifact is served throughout.
        assert all(p["within_budget"] == 1.0 and p["switches"] == 0 for p in run["phases"])
        assert {f["artifact"] for f in run["frames"]} == {"lite0/onnxruntime-fp32"}
        assert all(p["oracle_artifact"] == "lite0/onnxruntime-fp32" for p in run["phases"])
    assert (tmp_path / "out" / "scenario.png").stat().st_size > 0
    assert "CPU quota: half" in capsys.readouterr().out
