"""PyTorch backend: the reference, in eager mode.

Runs a ``model.pt`` written by ``edgedet-convert --formats torch``: an edgedet checkpoint whose
metadata names the variant, class count, input size and fusion, so the file alone rebuilds the
model (loaded with ``weights_only=True``: checkpoints are data, never code). It is what the other
backends are measured against, on a workstation or a GPU; devices use onnxruntime, OpenVINO or
TFLite. The Detector uses it only when asked for (``backend="torch"``), and this module (and so
torch) is imported only then (DESIGN.md, rule 1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgedet.backends.base import Backend, BackendError, ModelLoadError, TensorSpec

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only where torch is missing
    raise BackendError("PyTorch is not installed (the torch backend is the reference for workstations; "
                       "devices use onnxruntime, OpenVINO or TFLite): pip install torch") from exc

RUNTIME_VERSION: str = torch.__version__
INPUT_NAME = "images"
#: What a torch artifact's checkpoint metadata must hold to rebuild the model.
REQUIRED_METADATA = ("variant", "num_classes", "image_size")


class TorchBackend(Backend):
    """An EfficientDet rebuilt from an edgedet ``model.pt`` and run in eager mode.

    ``threads`` sets torch's intra-op thread count, which is process-wide in PyTorch (there is no
    per-model pool): the last torch backend loaded in a process decides it.
    """

    name = "torch"

    def __init__(self, path: str | Path, *, threads: int | None = None, device: str = "cpu") -> None:
        super().__init__(path, threads=threads)
        from edgedet.model import create_model
        from edgedet.model.checkpoint import CheckpointError, load_checkpoint, read_checkpoint

        if device not in ("cpu", "cuda"):
            raise BackendError(f"unknown torch device {device!r}; choose 'cpu' or 'cuda'")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError("torch here has no CUDA device; install a CUDA build of torch or use device='cpu'")
        try:
            state, meta = read_checkpoint(self.path)  # one read of the file for both
            missing = [k for k in REQUIRED_METADATA if k not in meta]
            if missing:
                raise ModelLoadError(f"{self.path} is not an edgedet torch artifact (its metadata lacks "
                                     f"{', '.join(missing)}); make one with edgedet-convert --formats torch")
            model = create_model(meta["variant"], int(meta["num_classes"]), image_size=int(meta["image_size"]),
                                 fusion=meta.get("fusion"))
            load_checkpoint(model, state)
        except CheckpointError as exc:
            raise ModelLoadError(f"torch could not load {self.path}: {exc}; the file is corrupt or truncated — "
                                 "re-export it with edgedet-convert or copy it again") from exc
        if threads:
            torch.set_num_threads(threads)
        self.device = device
        self.model = model.eval().fold_fusion_weights().to(device)
        config = self.model.config
        size, anchors = config.image_size, config.num_anchors()
        f32 = np.dtype(np.float32)
        self._inputs = [TensorSpec(INPUT_NAME, (1, 3, size, size), f32)]
        self._outputs = [TensorSpec("cls_logits", (1, anchors, config.num_classes), f32),
                         TensorSpec("box_regression", (1, anchors, 4), f32)]

    @property
    def runtime_version(self) -> str:
        return RUNTIME_VERSION

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            images = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            cls, box = self.model(images)
        return {"cls_logits": cls.float().cpu().numpy(), "box_regression": box.float().cpu().numpy()}
