"""The one face every inference runtime shows the rest of edgedet.

A backend loads one artifact file, reports its input spec and runtime version, and runs a batch:
``run(batch) -> {output name: array}``. Everything around inference (preprocessing, quantized
I/O, decoding, NMS) is shared code outside the backends.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedet.cpu import resolve_threads


class BackendError(RuntimeError):
    """A runtime is missing, or it could not load or run an artifact; the message says what to do."""


class ModelLoadError(BackendError):
    """The model file is missing, truncated or corrupt."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


class Backend(ABC):
    """One loaded artifact in one runtime. Calls to :meth:`run` are serialized by a lock, so one
    backend can be shared by threads (most runtimes' sessions are not re-entrant)."""

    #: Runtime name as used in manifests: "onnxruntime", "openvino", "tflite", "torch".
    name: str = ""

    def __init__(self, path: str | Path | None, *, threads: int | None = None) -> None:
        # None: a model held in memory, not loaded from a file (torch's TorchBackend.from_module).
        self.path = None if path is None else Path(path)
        # None: every core this process may use (affinity and cgroup quota), on every runtime alike.
        self.threads = resolve_threads(threads)
        if self.path is not None and not self.path.is_file():
            raise ModelLoadError(f"model file not found: {self.path}")
        self._lock = threading.Lock()

    @property
    @abstractmethod
    def runtime_version(self) -> str:
        """Version of the runtime package, part of every latency profile's key."""

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]:
        """The model's inputs (edgedet models have one)."""

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]:
        """The model's outputs."""

    @abstractmethod
    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; called under the lock."""

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run ``batch`` (already preprocessed, in the artifact's layout and dtype)."""
        with self._lock:
            return self._run(batch)

    def describe(self) -> dict[str, object]:
        """A short description for logs and profiles."""
        return {"backend": self.name, "version": self.runtime_version, "threads": self.threads,
                "file": self._file_name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._file_name!r}, threads={self.threads})"

    @property
    def _file_name(self) -> str:
        return "(in memory)" if self.path is None else self.path.name
