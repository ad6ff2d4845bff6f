"""The torch-free runtime on the Raspberry Pi's architecture: artifacts built here (x86) are
unpacked and served in an emulated aarch64 Debian (scripts/arm64/, qemu-user-static + debootstrap,
the root file system cached in ~/.cache/edgedet/arm64) and must give the same detections.

The end-to-end check runs for real (root, Debian's and PyPI's packages; .ci/run installs the host
tools). The comparer's own tests below need nothing of that.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.arm64.compare import FP32_MAX_SCORE_DIFF, FP32_MIN_IOU, compare_artifact  # noqa: E402


def _entry(precision: str, boxes, scores, classes) -> dict:
    return {"precision": precision, "frames": {"f.png": {"boxes": boxes, "scores": scores, "classes": classes}}}


def test_compare_matches_by_iou_not_position():
    ref = _entry("fp32", [[0, 0, 10, 10], [50, 50, 80, 90]], [0.9, 0.5], [1, 2])
    other = _entry("fp32", [[50, 50, 80, 90.01], [0, 0, 10, 10]], [0.5002, 0.9], [2, 1])  # other order
    a = compare_artifact("x", ref, other)
    assert a.failures() == []
    assert a.missing == a.extra == 0 and a.min_iou > 0.999 and a.max_score_diff == pytest.approx(2e-4)


def test_compare_partner_just_under_the_threshold_is_not_missing():
    ref = _entry("fp32", [[0, 0, 10, 10]], [0.3002], [0])
    other = _entry("fp32", [[0, 0, 10, 10]], [0.2999], [0])  # below 0.3 here, kept by detect.py (>= 0.05)
    assert compare_artifact("x", ref, other).failures() == []


def test_compare_flags_moved_box_other_class_and_score():
    ref = _entry("fp32", [[0, 0, 10, 10], [40, 40, 60, 60]], [0.9, 0.8], [0, 0])
    moved = compare_artifact("x", ref, _entry("fp32", [[0, 0, 10, 11], [40, 40, 60, 60]], [0.9, 0.8], [0, 0]))
    assert any("IoU" in f for f in moved.failures())
    other_class = compare_artifact("x", ref, _entry("fp32", [[0, 0, 10, 10], [40, 40, 60, 60]], [0.9, 0.8], [0, 3]))
    assert other_class.missing == 1 and other_class.extra == 1
    score = compare_artifact("x", ref, _entry("fp32", [[0, 0, 10, 10], [40, 40, 60, 60]], [0.9, 0.79], [0, 0]))
    assert any("score" in f for f in score.failures())


def test_compare_int8_is_ap50_against_the_reference():
    ref = _entry("int8", [[0, 0, 10, 10], [40, 40, 60, 60]], [0.9, 0.8], [0, 0])
    same = compare_artifact("x", ref, _entry("int8", [[0, 0, 10, 10.5], [40, 40, 60, 60]], [0.88, 0.81], [0, 0]))
    assert same.ap50 == 1.0 and same.failures() == []
    half = compare_artifact("x", ref, _entry("int8", [[0, 0, 10, 10]], [0.9], [0]))
    assert half.ap50 == pytest.approx(0.5) and half.failures()


def test_compare_reports_an_error_of_either_side():
    ref = _entry("fp32", [[0, 0, 10, 10]], [0.9], [0])
    a = compare_artifact("x", ref, {"precision": "fp32", "error": "BackendError: no CPU"})
    assert a.failures() == ["other: BackendError: no CPU"]


@pytest.fixture(scope="module")
def arm64_report(tmp_path_factory, onnx_exports):
    """The whole check, once: export, x86 run, arm64 install and run, compare. The suite's ONNX
    artifacts (lite0, d0; same weights and INT8 mode as the check's) join the bundle as they are;
    OpenVINO and TFLite are exported here (cached in ~/.cache/edgedet/arm64/exports)."""
    from scripts.arm64.check import Options, run_check

    logging.getLogger("edgedet.arm64").setLevel(logging.INFO)
    report = run_check(Options(formats=("openvino", "tflite")), work=tmp_path_factory.mktemp("arm64"),
                       prebuilt=onnx_exports[0])
    from scripts.arm64.compare import table

    print("\n" + table(report.agreements) + "\n" + json.dumps(report.to_dict()["seconds"]))
    return report


@pytest.mark.arm64
def test_arm64_runtime_is_installed_without_torch(arm64_report):
    arm = arm64_report.arm64
    assert arm["platform"]["machine"] == "aarch64"
    assert arm64_report.x86["platform"]["machine"] != "aarch64"  # really two architectures
    assert arm["install"]["torch_absent"] and not arm["platform"]["torch_importable"]
    assert {"onnxruntime", "tflite"} <= set(arm["platform"]["runtimes"]), arm["platform"]


@pytest.mark.arm64
def test_arm64_detections_match_x86(arm64_report):
    agreements = arm64_report.agreements
    # lite0 and d0, FP32 and INT8, on the runtimes that run on both (see README "Supported platforms").
    assert {(a.artifact.split("/")[0], a.precision) for a in agreements} >= {
        (v, p) for v in ("lite0", "d0") for p in ("fp32", "int8")}
    assert not arm64_report.failures(), arm64_report.failures()
    known = arm64_report.known_limits()  # OpenVINO crashes qemu-user: reported, not compared
    assert {a.backend for a in agreements if a.artifact not in known} >= {"onnxruntime", "tflite"}
    for a in agreements:
        if a.artifact in known:
            continue
        if a.exact:
            assert a.min_iou >= FP32_MIN_IOU and a.max_score_diff <= FP32_MAX_SCORE_DIFF
        else:  # against x86's INT8, and (the converter's gate) against x86's FP32
            assert a.ap50 >= a.min_ap50 and a.ap50_vs_fp32 >= a.min_ap50, a
    assert sum(a.reference_detections for a in agreements) > 0  # the frames have something to detect


@pytest.mark.arm64
def test_arm64_budgeted_selection_and_camera_loop(arm64_report):
    budget = arm64_report.arm64["budget"]
    assert "error" not in budget, budget
    assert budget["variant"] == "d0" and budget["precision"] == "int8", budget  # the INT8 walk: both fit
    camera = arm64_report.camera_loop
    assert camera["returncode"] == 0 and camera["frames"] == len(arm64_report.x86["frames"]), camera
    assert not arm64_report.problems, arm64_report.problems
