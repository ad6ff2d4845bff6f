"""Profiling that respects the user's time: hopeless artifacts are rejected after one call and
what cannot fit is not timed (real artifacts and runtimes, a deterministic clock)."""
from __future__ import annotations

import shutil

import pytest

from edgedet.detector import BudgetError, Detector
from clocks import StepClock

FRAME_SIZE = (640, 480)


@pytest.fixture(scope="module")
def models(onnx_exports, tmp_path_factory):
    exports, _ = onnx_exports
    root = tmp_path_factory.mktemp("timing-models")
    for variant in ("lite0", "d0"):
        shutil.copytree(exports / variant, root / variant)
    return root


def start(models, cache, budget, step_ms, **kw):
    return Detector(budget, models=models, profile_cache=cache, frame_size=FRAME_SIZE, clock=StepClock(step_ms),
                    warmup=2, runs=3, adapt=False, **kw)


def table(error: BudgetError) -> dict[str, str]:
    return {line.split()[0]: line for line in str(error).splitlines() if line.startswith(("lite0/", "d0/"))}


def test_hopeless_phi_costs_one_call_per_backend_and_is_remembered(models, tmp_path):
    """Every call 'takes' 100 ms against a 30 ms budget: each variant's int8 is rejected on its first
    call and its fp16 and fp32 are never loaded; a second start reads the rejections from the cache."""
    cache = tmp_path / "profiles.json"
    with pytest.raises(BudgetError, match="first call") as error:
        start(models, cache, 30, 100.0)
    rows = table(error.value)
    for variant in ("lite0", "d0"):
        assert "rejected after warm-up" in rows[f"{variant}/onnxruntime-int8"]
        for precision in ("fp16", "fp32"):
            row = rows[f"{variant}/onnxruntime-{precision}"]
            assert "skipped (int8 of onnxruntime already 3.3x over budget)" in row
    with pytest.raises(BudgetError) as again:
        start(models, cache, 30, 1.0)  # would fit if it measured: the cached rejection stands
    assert "rejected (cache)" in table(again.value)["lite0/onnxruntime-int8"]
    # A budget the cached first call does not rule out (100 ms < 3 x 50) is measured afresh.
    det = start(models, cache, 50, 20.0)
    assert {row.artifact: row.source for row in det.profile}["lite0/onnxruntime-int8"] == "measured"


def test_int8_scouts_then_fp32_and_fp16_only_if_it_can_win(models, tmp_path):
    """Everything fits: each phi is scouted by int8, the winner's fp32 is timed, fp16 cannot win."""
    det = start(models, tmp_path / "profiles.json", 30, 10.0)
    for variant in ("lite0", "d0"):
        rows = [(row.artifact.split("-")[-1], row.source) for row in det.profile if row.variant == variant]
        assert rows == [("int8", "measured"), ("fp32", "measured"), ("fp16", "skipped (cannot win: an fp32 fits)")]
    assert det.artifact.name == "d0/onnxruntime-fp32"  # the most accurate of the largest phi


def test_smaller_phi_precisions_are_not_timed_once_a_larger_phi_fits(onnx_exports, lite_family_exports, tmp_path):
    exports, _ = onnx_exports
    models = tmp_path / "models"
    shutil.copytree(exports / "lite0", models / "lite0")
    shutil.copytree(lite_family_exports / "lite1", models / "lite1")
    det = start(models, tmp_path / "profiles.json", 30, 10.0)
    sources = {row.artifact: row.source for row in det.profile}
    assert sources == {"lite0/onnxruntime-int8": "measured", "lite1/onnxruntime-fp32": "measured",
                       "lite0/onnxruntime-fp16": "skipped (cannot win: lite1 fits)",
                       "lite0/onnxruntime-fp32": "skipped (cannot win: lite1 fits)"}
    assert det.artifact.name == "lite1/onnxruntime-fp32"


def test_int8_well_over_budget_rules_out_its_runtime_and_timing_stops_early(models, tmp_path):
    """int8 at 50 ms against 30 (1.7x, under the 3x rejection): timed with 1 warm-up and 3 runs, and
    the fp16/fp32 of its runtime are not timed."""
    det_rows = {}
    with pytest.raises(BudgetError) as error:
        Detector(30, models=models, profile_cache=tmp_path / "p.json", frame_size=FRAME_SIZE, clock=StepClock(50.0),
                 warmup=3, runs=20, adapt=False)
    det_rows = table(error.value)
    assert det_rows["lite0/onnxruntime-int8"].split()[1] == "50.0"
    assert "skipped (int8 of onnxruntime already 1.7x over budget)" in det_rows["lite0/onnxruntime-fp32"]
    from edgedet.profiling import ProfileCache

    runs = sorted(e["latency"]["runs"] for e in ProfileCache(tmp_path / "p.json").entries().values())
    assert runs == [3, 3]  # lite0 and d0 int8: over is certain after 3 of 20
