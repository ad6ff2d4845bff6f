"""The front door: ``import edgedet`` gives the headline API, imports no runtime, and works where torch
cannot be imported."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import edgedet
from no_torch import BLOCKER

PUBLIC = {"Detector", "Detections", "BudgetError", "NoArtifactsError", "InputError", "BackendError",
          "ManifestError", "__version__"}


def test_all_lists_exactly_the_public_api():
    assert set(edgedet.__all__) == PUBLIC and len(edgedet.__all__) == len(PUBLIC)
    for name in edgedet.__all__:
        assert getattr(edgedet, name) is not None


def test_public_names_are_the_defining_modules_objects():
    from edgedet.backends import BackendError
    from edgedet.detections import Detections
    from edgedet.detector import BudgetError, Detector, NoArtifactsError
    from edgedet.manifest import ManifestError
    from edgedet.preprocess import InputError

    assert (edgedet.Detector, edgedet.Detections, edgedet.BudgetError, edgedet.NoArtifactsError,
            edgedet.InputError, edgedet.BackendError, edgedet.ManifestError) == (
        Detector, Detections, BudgetError, NoArtifactsError, InputError, BackendError, ManifestError)
    # The errors a caller catches are the standard families too, so generic handlers keep working.
    assert issubclass(edgedet.NoArtifactsError, FileNotFoundError)
    assert issubclass(edgedet.InputError, ValueError)


def test_version_matches_the_installed_distribution():
    from importlib.metadata import version

    assert edgedet.__version__ == version("edgedet")


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Detectorr'"):
        edgedet.Detectorr  # noqa: B018


def _child(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_edgedet_loads_no_runtime_and_detector_resolves_without_torch():
    summary = _child(
        "import json, sys\n"
        "import edgedet\n"
        "heavy = ('torch', 'cv2', 'onnxruntime', 'openvino', 'ai_edge_litert', 'tflite_runtime')\n"
        "at_import = sorted({m.split('.')[0] for m in sys.modules} & set(heavy))\n"
        "detector = repr(edgedet.Detector)\n"
        "after = sorted({m.split('.')[0] for m in sys.modules} & set(heavy))\n"
        "print(json.dumps({'at_import': at_import, 'detector': detector, 'after': after}))\n")
    assert summary["at_import"] == []
    assert summary["detector"] == "<class 'edgedet.detector.Detector'>"
    # Resolving Detector needs OpenCV for the pipeline, but still no runtime and no torch.
    assert "torch" not in summary["after"] and "onnxruntime" not in summary["after"]
