"""TFLite backend: the LiteRT interpreter (``ai_edge_litert``), else ``tflite_runtime``; XNNPACK."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgedet.backends.base import Backend, BackendError, ModelLoadError, TensorSpec

try:
    from ai_edge_litert import interpreter as _litert

    _RUNTIME, _VERSION_OF = "ai-edge-litert", "ai_edge_litert"
except ImportError:  # older devices: the legacy runtime (slower INT8, numpy<2 only, see docs/TOOLCHAIN.md)
    try:
        from tflite_runtime import interpreter as _litert

        _RUNTIME, _VERSION_OF = "tflite-runtime", "tflite_runtime"
    except ImportError as exc:  # pragma: no cover
        raise BackendError("no TFLite interpreter installed: pip install 'edgedet[tflite]'") from exc


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_RUNTIME)
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


RUNTIME_VERSION: str = _package_version()


class TfliteBackend(Backend):
    """A .tflite model in the LiteRT interpreter (XNNPACK delegate applied by default)."""

    name = "tflite"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__(path, threads=threads)
        try:
            self.interpreter = _litert.Interpreter(model_path=str(self.path), num_threads=self.threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise ModelLoadError(f"the TFLite interpreter could not load {self.path} "
                                 f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}); the file "
                                 "is corrupt or truncated — re-export it with edgedet-convert or copy it again"
                                 ) from exc
        self._input = self.interpreter.get_input_details()[0]
        self._outputs = self.interpreter.get_output_details()

    @property
    def runtime_version(self) -> str:
        return RUNTIME_VERSION

    @staticmethod
    def _spec(detail: dict) -> TensorSpec:
        return TensorSpec(detail["name"], tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]))

    @property
    def inputs(self) -> list[TensorSpec]:
        return [self._spec(self._input)]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [self._spec(o) for o in self._outputs]

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.interpreter.set_tensor(self._input["index"], batch)
        self.interpreter.invoke()
        # get_tensor copies, so the results survive the next invoke().
        return {o["name"]: self.interpreter.get_tensor(o["index"]) for o in self._outputs}
