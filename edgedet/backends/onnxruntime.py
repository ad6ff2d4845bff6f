"""onnxruntime backend: CPU by default; CUDA or TensorRT where installed (e.g. on a Jetson)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgedet.backends.base import Backend, BackendError, ModelLoadError, TensorSpec

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - exercised only where the extra is missing
    raise BackendError("onnxruntime is not installed: pip install 'edgedet[onnx]'") from exc

RUNTIME_VERSION: str = ort.__version__
#: Friendly device names to onnxruntime execution providers, most specific first.
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
           "tensor(int8)": np.int8}


class OnnxRuntimeBackend(Backend):
    """An ONNX model in an onnxruntime InferenceSession."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int | None = None, device: str = "cpu") -> None:
        super().__init__(path, threads=threads)
        if device not in PROVIDERS:
            raise BackendError(f"unknown onnxruntime device {device!r}; choose one of {sorted(PROVIDERS)}")
        available = set(ort.get_available_providers())
        wanted = PROVIDERS[device][0]
        if wanted not in available:
            raise BackendError(f"onnxruntime here has no {wanted} (available: {sorted(available)}); "
                               "install the matching onnxruntime build (e.g. onnxruntime-gpu) or use device='cpu'")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads  # its own default counts cores, not the quota
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=[p for p in PROVIDERS[device] if p in available])
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ModelLoadError(f"onnxruntime could not load {self.path} ({exc.__class__.__name__}: "
                                 f"{str(exc).splitlines()[0][:200]}); the file is corrupt or truncated — "
                                 "re-export it with edgedet-convert or copy it again") from exc
        self.device = device
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._input_name = self.session.get_inputs()[0].name

    @property
    def runtime_version(self) -> str:
        return RUNTIME_VERSION

    @staticmethod
    def _spec(arg) -> TensorSpec:
        return TensorSpec(arg.name, tuple(int(d) if isinstance(d, int) else -1 for d in arg.shape),
                          np.dtype(_DTYPES.get(arg.type, np.float32)))

    @property
    def inputs(self) -> list[TensorSpec]:
        return [self._spec(i) for i in self.session.get_inputs()]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [self._spec(o) for o in self.session.get_outputs()]

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        # On the CPU provider a C-contiguous numpy input of the input's dtype is used in place (the
        # tensor is created over the array's memory, no copy): I/O binding would save nothing on
        # the input, and binding outputs would return buffers the next call overwrites.
        results = self.session.run(self._output_names, {self._input_name: batch})
        return dict(zip(self._output_names, results))

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe: no lock needed, and none taken, so threads overlap.
        return self._run(batch)
