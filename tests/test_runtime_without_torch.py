"""The runtime works where torch cannot be imported (DESIGN.md, rule 1): every backend, selection
by budget, and detection, in a subprocess whose import of torch fails."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "timm", "effdet", "converters", "litert_torch"):
                raise ImportError(f"{name} is not installed on this device (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoTorch())
    import json
    import numpy as np
    import edgedet
    from edgedet.detector import Detector

    models, backend = sys.argv[1], sys.argv[2]
    frame = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    chosen = Detector(10_000, models=models, backend=backend, profile_cache=False, frame_size=(640, 480),
                      warmup=1, runs=2)
    found = chosen(frame)
    served = Detector(variant="lite0", models=models, backend=backend, profile_cache=False)
    print(json.dumps({"variant": chosen.variant, "backend": chosen.backend, "rows": len(chosen.profile),
                      "detections": len(found), "served": len(served(frame)) >= 0,
                      "torch_loaded": any(m.split(".")[0] == "torch" for m in sys.modules)}))
""")


def run_child(models, backend: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(models), backend], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_blocker_really_blocks_torch():
    code = CHILD.split("import json")[0] + "import torch\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


def test_onnxruntime_runtime_without_torch(onnx_exports):
    out, _ = onnx_exports
    summary = run_child(out, "onnxruntime")
    assert summary["backend"] == "onnxruntime" and summary["rows"] == 6  # lite0 + d0, 3 precisions each
    assert summary["served"] and not summary["torch_loaded"]
