"""A bigger φ through every format (marked slow: minutes on two cores; `pytest -m slow`).

D1 (640 px, BiFPN width 88, 4 repeats) exercises what D0 and Lite0 do not: a wider BiFPN, more
fusion nodes, and larger feature maps in every runtime. Each artifact is run in its real runtime
by the pipeline's own parity check; FP32 must match PyTorch within 1e-3.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import EXPORT_OPTIONS
from converters import OnnxExporter, OpenVinoExporter, TfliteExporter, convert
from edgedet.detector import Detector
from edgedet.manifest import Manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def d1_exports(tmp_path_factory):
    out = tmp_path_factory.mktemp("d1")
    # Full INT8 everywhere: the accuracy-aware searches are covered on D0 and cost minutes here.
    exporters = {"onnx": OnnxExporter(accuracy_aware=False), "openvino": OpenVinoExporter(accuracy_aware=False),
                 "tflite": TfliteExporter()}
    report = convert("d1", formats="onnx,openvino,tflite", precisions="fp32,fp16,int8", out_dir=out,
                     exporters=exporters, **EXPORT_OPTIONS)
    print(f"\n{report.table()}")
    return out, report


def test_every_format_and_precision_passes_parity(d1_exports):
    out, report = d1_exports
    assert report.ok, report.table()
    assert len(report.results) == 9
    for result in report.results:
        manifest = Manifest.load(result.path)
        assert manifest.input.shape[-1] == 640 or manifest.input.shape[1] == 640
        if result.precision == "fp32":
            assert manifest.parity["cls_max_abs"] <= 1e-3 and manifest.parity["box_max_abs"] <= 1e-3


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "tflite"])
def test_detector_serves_d1(d1_exports, backend):
    out, _ = d1_exports
    detector = Detector(variant="d1", models=out, backend=backend, precision="int8", profile_cache=False)
    detections = detector(np.zeros((480, 640, 3), np.uint8))
    assert detector.variant == "d1" and detections.xyxy.shape[1] == 4
