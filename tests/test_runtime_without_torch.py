"""The runtime works where torch cannot be imported (docs/ARCHITECTURE.md, rule 1): every backend, selection
by budget, and detection, in a subprocess whose import of torch fails. OpenVINO and TFLite run the
same check on their artifacts in their own test modules."""
from __future__ import annotations

import subprocess
import sys

from no_torch import BLOCKER, run_without_torch


def test_blocker_really_blocks_torch():
    code = BLOCKER + "import torch\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


def test_onnxruntime_runtime_without_torch(onnx_exports):
    out, _ = onnx_exports
    summary = run_without_torch(out, "onnxruntime")
    assert summary["backend"] == "onnxruntime" and summary["rows"] == 6  # lite0 + d0, 3 precisions each
    assert summary["served_variant"] == "lite0" and summary["served_boxes_shape"][1] == 4
    assert summary["served_boxes_inside"] and not summary["torch_loaded"]


def test_only_the_model_and_the_torch_backend_import_torch():
    """docs/ARCHITECTURE.md rule 1, in the source: no module of the runtime imports torch, even lazily."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "edgedet"
    allowed = {package / "model", package / "backends" / "torch.py"}
    offenders = []
    for path in package.rglob("*.py"):
        if any(path == a or a in path.parents for a in allowed):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("torch", "torchvision", "converters") or n.startswith("edgedet.model")
                   for n in names):
                offenders.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    assert offenders == [], offenders
