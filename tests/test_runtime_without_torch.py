"""The runtime works where torch cannot be imported (DESIGN.md, rule 1): every backend, selection
by budget, and detection, in a subprocess whose import of torch fails. OpenVINO and TFLite run the
same check on their artifacts in their own test modules."""
from __future__ import annotations

import subprocess
import sys

from no_torch import CHILD, run_without_torch


def test_blocker_really_blocks_torch():
    code = CHILD.split("import json")[0] + "import torch\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


def test_onnxruntime_runtime_without_torch(onnx_exports):
    out, _ = onnx_exports
    summary = run_without_torch(out, "onnxruntime")
    assert summary["backend"] == "onnxruntime" and summary["rows"] == 6  # lite0 + d0, 3 precisions each
    assert summary["served_variant"] == "lite0" and summary["served_boxes_shape"][1] == 4
    assert summary["served_boxes_inside"] and not summary["torch_loaded"]
