"""Run the whole runtime (selection by budget, detection) in a subprocess whose import of torch
fails: docs/ARCHITECTURE.md rule 1. Used by each backend's tests with that backend's real artifacts."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

#: Prepended to a child's code: every import of torch (and of what needs it) fails there.
BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "timm", "effdet", "converters", "litert_torch"):
                raise ImportError(f"{name} is not installed on this device (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoTorch())
""")

CHILD = BLOCKER + textwrap.dedent("""
    import json
    import numpy as np
    from edgedet import Detector

    models, backend = sys.argv[1], sys.argv[2]
    frame = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    chosen = Detector(10_000, models=models, backend=backend, profile_cache=False, frame_size=(640, 480),
                      warmup=1, runs=2)
    found = chosen(frame)
    served = Detector(variant="lite0", models=models, backend=backend, profile_cache=False)
    boxes = served(frame).xyxy
    print(json.dumps({"variant": chosen.variant, "backend": chosen.backend, "rows": len(chosen.profile),
                      "detections": len(found), "served_variant": served.variant,
                      "served_boxes_shape": [len(boxes), boxes.shape[1]],
                      "served_boxes_inside": bool(((boxes >= -1) & (boxes <= 641)).all()),
                      "torch_loaded": any(m.split(".")[0] == "torch" for m in sys.modules)}))
""")


def run_without_torch(models, backend: str) -> dict:
    """Select and serve ``backend`` artifacts under ``models`` with torch blocked; a summary dict."""
    result = subprocess.run([sys.executable, "-c", CHILD, str(models), backend], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])

