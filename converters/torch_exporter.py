"""PyTorch artifacts for the reference backend (:mod:`edgedet.backends.torch`): FP32 only.

The file is an edgedet checkpoint, ``model.pt``: the weights plus metadata (variant, class count,
input size, fusion) from which the backend rebuilds the model; ``torch.load(weights_only=True)``
reads it. Its parity figures say the reference reproduces itself (max abs 0: same code, same
weights); what it is for is running the PyTorch model behind the same Detector, manifest and
profile cache as the device artifacts (e.g. on a workstation GPU), and comparing against it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.base import ArtifactIO, Exporter, Runner, register_exporter

if TYPE_CHECKING:
    from converters.calibration import Calibration
    from edgedet.config import ModelConfig

__all__ = ["TorchExporter"]

MODEL_FILE = "model.pt"


@register_exporter
class TorchExporter(Exporter):
    """The eval-mode PyTorch model as an edgedet checkpoint, NCHW float32 I/O."""

    name = "torch"
    backend = "torch"
    precisions = ("fp32",)
    calibrated_precisions = ()
    requires = {"torch": "torch"}

    def __init__(self, *, threads: int | None = None) -> None:
        self.threads = threads

    def export(self, model: Any, config: ModelConfig, out_dir: Path, precision: str,
               calibration: Calibration | None) -> list[Path]:
        from edgedet.model.checkpoint import save_checkpoint

        self.check_request(precision, calibration)
        path = Path(out_dir) / MODEL_FILE
        save_checkpoint(model, path, metadata={"variant": config.name, "num_classes": config.num_classes,
                                               "image_size": config.image_size, "fusion": config.fusion})
        return [path]

    def describe(self, files: Sequence[Path], config: ModelConfig, precision: str) -> ArtifactIO:
        from edgedet.backends.torch import TorchBackend

        # The backend describes its own I/O: the same specs a live module's manifest gets
        # (TorchBackend.manifest), so the two cannot drift apart.
        input_spec, outputs = TorchBackend(files[0]).io_specs()
        return ArtifactIO(input=input_spec, outputs=outputs)

    def runner(self, files: Sequence[Path], io: ArtifactIO) -> Runner:
        from edgedet.backends.torch import TorchBackend

        backend = TorchBackend(files[0], threads=self.threads)

        def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            outputs = backend.run(batch)
            return outputs["cls_logits"], outputs["box_regression"]

        return run
