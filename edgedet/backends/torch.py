"""PyTorch backend: the reference, in eager mode.

Runs a ``model.pt`` written by ``edgedet-convert --formats torch``: an edgedet checkpoint whose
metadata names the variant, class count, input size and fusion, so the file alone rebuilds the
model (loaded with ``weights_only=True``: checkpoints are data, never code). It is what the other
backends are measured against, on a workstation or a GPU; devices use onnxruntime, OpenVINO or
TFLite. The Detector uses it only when asked for (``backend="torch"``), and this module (and so
torch) is imported only then (docs/ARCHITECTURE.md, rule 1).

A live module (being trained, evaluated or benchmarked) runs the same way, through the same
:class:`~edgedet.pipeline.Pipeline` as every artifact::

    backend = TorchBackend.from_module(model)
    pipeline = Pipeline(backend.manifest(labels=names), backend)   # frames in, Detections out

:meth:`TorchBackend.manifest` describes the module exactly as the manifest of its exported torch
artifact would (``TorchExporter.describe`` reads the same :meth:`TorchBackend.io_specs`), minus
the files, which a live module does not have.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgedet.backends.base import Backend, BackendError, ModelLoadError, TensorSpec
from edgedet.manifest import (AnchorSpec, InputSpec, Manifest, NormalizationSpec, OutputSpec, WeightsInfo,
                              utc_now)

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
    """An EfficientDet rebuilt from an edgedet ``model.pt`` (or a live one, :meth:`from_module`)
    and run in eager mode.

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
        self._attach(model.eval().fold_fusion_weights().to(device), device, threads)

    @classmethod
    def from_module(cls, model: Any, *, device: str | None = None, threads: int | None = None) -> TorchBackend:
        """Run ``model``, a live :class:`~edgedet.model.EfficientDet`, as it is: not copied, not
        moved, its mode and fusion weights left alone (put it in eval mode to evaluate). ``device``
        is where its parameters are unless given (the batches go there)."""
        backend = cls.__new__(cls)
        Backend.__init__(backend, None, threads=threads)
        backend._attach(model, device or str(next(model.parameters()).device), threads)
        return backend

    def _attach(self, model: Any, device: str, threads: int | None) -> None:
        if threads:  # process-wide in torch: only when asked for, never as a side effect of a default
            torch.set_num_threads(threads)
        else:
            self.threads = torch.get_num_threads()  # what actually runs
        self.device = device
        self.model = model
        config = self.model.config
        size, anchors = config.image_size, config.num_anchors()
        f32 = np.dtype(np.float32)
        self._inputs = [TensorSpec(INPUT_NAME, (1, 3, size, size), f32)]
        self._outputs = [TensorSpec("cls_logits", (1, anchors, config.num_classes), f32),
                         TensorSpec("box_regression", (1, anchors, 4), f32)]

    def io_specs(self) -> tuple[InputSpec, tuple[OutputSpec, ...]]:
        """The input and outputs as a manifest records them (NCHW float32, RGB, the model's
        normalization): what ``edgedet-convert --formats torch`` writes, and what :meth:`manifest`
        gives a live module."""
        (inp,) = self._inputs
        config = self.model.config
        input_spec = InputSpec(name=inp.name, shape=inp.shape, layout="NCHW", dtype="float32",
                               normalization=NormalizationSpec.from_config(config.normalization), color="RGB",
                               quantization=None)
        outputs = tuple(OutputSpec(name=o.name, role=o.name, shape=o.shape, dtype="float32") for o in self._outputs)
        return input_spec, outputs

    def manifest(self, *, labels: Sequence[str] | None = None, weights: WeightsInfo | None = None) -> Manifest:
        """A manifest of the model this backend runs, built in memory (for a :class:`~edgedet.pipeline.Pipeline`
        around a live module): what its exported torch artifact's manifest would say about input,
        outputs, anchors and classes, but no files (:attr:`Manifest.in_memory`), no parity.

        ``labels`` default to ``class_0``, ``class_1``... (the converter's default);
        ``weights`` to "a live module" (its provenance is the caller's to state: ``random`` is
        reported false unless ``weights`` says otherwise).
        """
        config = self.model.config
        names = tuple(str(n) for n in labels) if labels is not None else tuple(
            f"class_{i}" for i in range(config.num_classes))
        input_spec, outputs = self.io_specs()
        return Manifest(
            variant=config.name, family=config.family, phi=config.phi, num_classes=config.num_classes,
            labels=names, input=input_spec, outputs=outputs, anchors=AnchorSpec.from_config(config),
            backend=self.name, precision="fp32", files={},
            weights=weights or WeightsInfo(source=f"live {type(self.model).__name__} module", sha256=None,
                                           random=False),
            tools={"torch": RUNTIME_VERSION}, created=utc_now())

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
