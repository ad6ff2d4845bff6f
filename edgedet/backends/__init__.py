"""Inference runtimes behind one face (:class:`~edgedet.backends.base.Backend`).

Each backend module imports only its own runtime, and only when asked for: a device with just
onnxruntime installed never imports OpenVINO, TFLite or torch. ``torch`` is the reference
backend (eager PyTorch, for workstations): it is never chosen automatically.
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from edgedet.backends.base import Backend, BackendError, ModelLoadError, TensorSpec

#: Manifest backend name -> (module, class).
BACKENDS = {
    "onnxruntime": ("edgedet.backends.onnxruntime", "OnnxRuntimeBackend"),
    "openvino": ("edgedet.backends.openvino", "OpenVinoBackend"),
    "tflite": ("edgedet.backends.tflite", "TfliteBackend"),
    "torch": ("edgedet.backends.torch", "TorchBackend"),
}
#: The device runtimes: what ``backend="auto"`` chooses among (torch only when named).
DEVICE_BACKENDS = ("onnxruntime", "openvino", "tflite")


def available_backends(names: Sequence[str] = DEVICE_BACKENDS) -> list[str]:
    """Those of ``names`` (default: the device runtimes) whose runtime imports here."""
    found = []
    for name in names:
        try:
            _backend_class(name)
        except BackendError:
            continue
        found.append(name)
    return found


def _backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


def runtime_version(name: str) -> str:
    """Version of backend ``name``'s runtime (imports the runtime, loads no model)."""
    _backend_class(name)
    return importlib.import_module(BACKENDS[name][0]).RUNTIME_VERSION


def load_backend(name: str, path: str | Path, *, threads: int | None = None, **options) -> Backend:
    """Load ``path`` in backend ``name`` (options: ``device=`` for onnxruntime/OpenVINO, ...)."""
    return _backend_class(name)(path, threads=threads, **options)


__all__ = ["BACKENDS", "DEVICE_BACKENDS", "Backend", "BackendError", "ModelLoadError", "TensorSpec", "available_backends",
           "load_backend", "runtime_version"]
