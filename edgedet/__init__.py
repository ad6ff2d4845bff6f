"""edgedet: EfficientDet object detectors on edge devices.

The public API lives here::

    import edgedet
    detector = edgedet.Detector(budget_ms=30)
    detections = detector(frame)

The runtime (this package, minus :mod:`edgedet.model`) needs only numpy, OpenCV and one inference
runtime; torch is imported only by :mod:`edgedet.model` and the converters. ``import edgedet``
itself imports none of them: the names below are resolved on first use (PEP 562), so a CLI or a
config lookup does not pay for OpenCV or a runtime it never touches.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it (one home per name; imported when first asked for).
_LAZY = {
    "Detector": "edgedet.detector",
    "Detections": "edgedet.detections",
    "BudgetError": "edgedet.detector",
    "NoArtifactsError": "edgedet.detector",
    "InputError": "edgedet.preprocess",
    "BackendError": "edgedet.backends.base",
    "ManifestError": "edgedet.manifest",
}

__all__ = ["Detector", "Detections", "BudgetError", "NoArtifactsError", "InputError", "BackendError",
           "ManifestError", "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ below imports on demand
    from edgedet.backends.base import BackendError
    from edgedet.detections import Detections
    from edgedet.detector import BudgetError, Detector, NoArtifactsError
    from edgedet.manifest import ManifestError
    from edgedet.preprocess import InputError


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgedet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
