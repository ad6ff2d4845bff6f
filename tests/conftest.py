"""Shared test setup.

tests/ is importable (the effdet reference shim lives here), and real exported artifacts are built
once per test session and shared: exports are the slowest part of the suite.
"""
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

def _export_dir(tmp_path_factory, name: str) -> Path:
    """A fresh directory, or with EDGEDET_TEST_EXPORTS=DIR (local iteration only; CI never sets it) a
    persistent one, where the converter's rerun-skip reuses earlier exports (tests that assert a
    fresh build then see "skipped")."""
    keep = os.environ.get("EDGEDET_TEST_EXPORTS")
    return Path(keep) / name if keep else tmp_path_factory.mktemp(name)


#: Realistic random weights (converters.weights.realistic_random_), 8 synthetic calibration images.
EXPORT_OPTIONS = dict(weights="random", allow_random=True, calibration="synthetic", calibration_count=8)


@pytest.fixture(scope="session")
def onnx_exports(tmp_path_factory):
    """lite0 and d0 exported to ONNX at fp32, fp16 and int8: (directory, report). Read-only.

    INT8 is fully quantized (``--int8-mode full``, what random weights get by default; stated
    here so that the fixture does not follow a change of default): an accuracy-aware search on
    random D0 (target cls >= 0.999, box >= 0.998) took 11 quantizations and left 190 of its 565
    compute nodes in float (7.6 MB instead of 4.9), which the tests reading these artifacts (sizes,
    INT8 parity, runtime) are not about. tests/test_convert_onnx.py tests the accuracy-aware
    search once, on D0.
    """
    from converters import OnnxExporter, convert

    out = _export_dir(tmp_path_factory, "onnx_exports")
    started = time.perf_counter()
    report = convert(["lite0", "d0"], formats="onnx", precisions=["fp32", "fp16", "int8"], out_dir=out,
                     exporters={"onnx": OnnxExporter(accuracy_aware=False)}, **EXPORT_OPTIONS)
    print(f"\n{report.table()}\n(total {time.perf_counter() - started:.1f} s)")
    assert report.ok, report.table()
    return out, report


@pytest.fixture(scope="session")
def lite_family_exports(tmp_path_factory):
    """lite1 and lite2 at fp32 (ONNX): with lite0 they make a family to walk up in φ. Read-only."""
    from converters import convert

    out = _export_dir(tmp_path_factory, "lite_family")
    report = convert(["lite1", "lite2"], formats="onnx", precisions=["fp32"], out_dir=out, **EXPORT_OPTIONS)
    assert report.ok, report.table()
    return out
