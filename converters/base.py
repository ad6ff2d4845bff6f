"""The exporter interface: one small class per backend, all with the same face (Optimum-style).

An :class:`Exporter` turns an eval-mode PyTorch EfficientDet into the files of one artifact at
one precision, says how to feed them (:meth:`Exporter.describe`, read back from the files), and
runs them (:meth:`Exporter.runner`) so that :mod:`converters.verify` can compare them with
PyTorch. The pipeline (:func:`converters.convert`) owns everything around it: weights, staging
directories, atomic publishing, manifests, parity, skipping.

Adding a backend = subclassing :class:`Exporter` and calling :func:`register_exporter`; the CLI's
``--formats`` lists whatever is registered.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgedet.manifest import InputSpec, OutputSpec

if TYPE_CHECKING:
    from converters.calibration import Calibration
    from edgedet.config import ModelConfig

__all__ = [
    "EXPORTERS",
    "ArtifactIO",
    "ConvertError",
    "Exporter",
    "Runner",
    "get_exporter",
    "package_versions",
    "register_exporter",
]

#: What the extra that brings every converter dependency is called.
INSTALL_HINT = "pip install edgedet[convert]"


class ConvertError(ValueError):
    """A conversion request that cannot be carried out; raised before any work starts."""


#: Runs one artifact on a preprocessed batch; returns ``(cls_logits, box_regression)`` as float32.
Runner = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


@dataclass(frozen=True)
class ArtifactIO:
    """How to feed an artifact and what comes out, as read back from its files."""

    input: InputSpec
    outputs: tuple[OutputSpec, ...]
    #: Layers left in floating point in a reduced-precision graph (manifest ``float_layers``).
    float_layers: tuple[str, ...] = ()


class Exporter(ABC):
    """Exports one backend's artifacts. Instances live for one :func:`converters.convert` call
    and may cache work across precisions of the same model (e.g. the FP32 graph)."""

    #: The ``--formats`` name (``"onnx"``).
    name: ClassVar[str]
    #: The manifest ``backend`` that runs the files (``"onnxruntime"``).
    backend: ClassVar[str]
    #: Precisions this exporter makes, in build order.
    precisions: ClassVar[tuple[str, ...]]
    #: Precisions that need calibration data.
    calibrated_precisions: ClassVar[tuple[str, ...]] = ("int8",)
    #: Importable module names this exporter needs, and the distribution names they come from.
    requires: ClassVar[dict[str, str]] = {}
    #: Bump when the exporter's output changes for the same inputs (part of the export key).
    revision: ClassVar[int] = 1
    #: The FP32 graph this exporter builds every precision from (``"onnx"``, ``"tflite"``), or None.
    #: Exporters of one kind share it: a distributed run builds it once per model and ships it.
    fp32_kind: ClassVar[str | None] = None
    #: What the artifacts may take (``input_kind``, :mod:`converters.frame_input`): the exporters
    #: that make frame-input artifacts list ``("frame", "tensor")``, the first the default.
    input_kinds: ClassVar[tuple[str, ...]] = ("tensor",)

    @classmethod
    def missing_packages(cls) -> list[str]:
        """Distributions in :attr:`requires` that are not installed."""
        return [dist for module, dist in cls.requires.items() if importlib.util.find_spec(module) is None]

    @classmethod
    def tool_versions(cls) -> dict[str, str]:
        """Versions of the packages that shape the output (manifest ``tools``, export key)."""
        return package_versions(["edgedet", "torch", "numpy", "opencv-python-headless",
                                 *cls.requires.values()])

    def options(self, precision: str) -> dict[str, str]:
        """The settings of this instance that shape ``precision``'s files or their parity figures
        (e.g. ``int8_mode``, ``input_dtype``). They go into the export key, so changing one rebuilds
        only the artifacts it affects, and into the manifest's ``options``. Settings that change
        speed only (threads) stay out."""
        return {}

    def note(self, config: ModelConfig, precision: str) -> str | None:
        """A plain-words remark on this artifact for the manifest's ``options["note"]`` (the
        Detector's profile and the benchmark show it), e.g. where a precision cannot pay on this
        backend for this architecture; None for none. Not part of the export key: it says what the
        files are, it does not shape them."""
        return None

    def check_request(self, precision: str, calibration: Calibration | None) -> None:
        """:class:`ConvertError` unless this exporter makes ``precision`` and has the calibration
        it needs (the pipeline asks only for such; this guards direct calls of :meth:`export`)."""
        if precision not in self.precisions:
            raise ConvertError(f"{self.name} exports {', '.join(self.precisions)}, not {precision!r}")
        if precision in self.calibrated_precisions and calibration is None:
            raise ConvertError(f"{precision} needs calibration data (--calibration)")

    @abstractmethod
    def export(self, model: Any, config: ModelConfig, out_dir: Path, precision: str,
               calibration: Calibration | None) -> list[Path]:
        """Write the artifact's files into ``out_dir`` (an empty staging directory); return them,
        the file the backend loads first. ``model`` is an eval-mode EfficientDet with folded
        fusion weights, ``config`` its :class:`~edgedet.config.ModelConfig`; ``calibration`` is
        given for the precisions in :attr:`calibrated_precisions`."""

    @abstractmethod
    def describe(self, files: Sequence[Path], config: ModelConfig, precision: str) -> ArtifactIO:
        """Input and output specs (and float layers) of exported ``files``, read from the files."""

    @abstractmethod
    def runner(self, files: Sequence[Path], io: ArtifactIO) -> Runner:
        """A callable that runs the exported ``files`` on one preprocessed batch."""

    def fp32_graph(self, model: Any, config: ModelConfig) -> bytes:
        """The serialized FP32 graph of :attr:`fp32_kind` that :meth:`export` starts from."""
        raise NotImplementedError(f"{self.name} builds on no shared FP32 graph")

    def seed_fp32(self, model: Any, config: ModelConfig, graph: bytes) -> None:
        """Use ``graph`` (from :meth:`fp32_graph`, perhaps in another process) as ``model``'s FP32 graph."""
        raise NotImplementedError(f"{self.name} builds on no shared FP32 graph")

    def release(self) -> None:
        """Drop any cache (called when the pipeline moves to another model)."""


EXPORTERS: dict[str, type[Exporter]] = {}


def register_exporter(cls: type[Exporter], *, replace: bool = False) -> type[Exporter]:
    """Make ``cls`` available under ``cls.name`` (usable as a class decorator)."""
    if cls.name in EXPORTERS and not replace and EXPORTERS[cls.name] is not cls:
        raise ValueError(f"an exporter named {cls.name!r} is already registered "
                         f"({EXPORTERS[cls.name].__qualname__}); pass replace=True to override")
    EXPORTERS[cls.name] = cls
    return cls


def get_exporter(name: str) -> type[Exporter]:
    """The exporter class registered as ``name``; :class:`ConvertError` listing the known ones."""
    try:
        return EXPORTERS[name]
    except KeyError:
        raise ConvertError(f"unknown format {name!r}; available: {', '.join(EXPORTERS) or 'none'}") from None


def package_versions(distributions: Sequence[str]) -> dict[str, str]:
    """``{distribution: version}`` of the installed ones among ``distributions``."""
    out = {}
    for dist in dict.fromkeys(distributions):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
