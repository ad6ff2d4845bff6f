"""OpenVINO backend: CPU, GPU, NPU or AUTO, with a latency performance hint."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgedet.backends.base import Backend, BackendError, ModelLoadError, TensorSpec

try:
    import openvino as ov
except ImportError as exc:  # pragma: no cover
    raise BackendError("OpenVINO is not installed: pip install 'edgedet[openvino]'") from exc

RUNTIME_VERSION: str = ov.get_version()


class OpenVinoBackend(Backend):
    """An OpenVINO IR (.xml + .bin) compiled for one device.

    ``inference_precision`` pins the precision the CPU plug-in computes in: OpenVINO runs FP32 IR
    in bf16 on CPUs with AVX-512 BF16 unless told ``"f32"`` (docs/TOOLCHAIN.md), so the converter's
    manifest says which one the artifact was verified with.
    """

    name = "openvino"

    def __init__(self, path: str | Path, *, threads: int | None = None, device: str = "CPU",
                 inference_precision: str | None = "f32") -> None:
        super().__init__(path, threads=threads)
        self.device = device.upper()
        core = ov.Core()
        if self.device != "AUTO" and not any(d.startswith(self.device) for d in core.available_devices):
            raise BackendError(f"OpenVINO device {self.device!r} is not available here "
                               f"(available: {core.available_devices}); use device='CPU' or 'AUTO'")
        bin_path = self.path.with_suffix(".bin")
        if not bin_path.is_file():
            raise ModelLoadError(f"OpenVINO weights {bin_path} are missing beside {self.path.name}")
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if self.device == "CPU":  # the LATENCY hint alone runs one stream on fewer threads than we may use
            config["INFERENCE_NUM_THREADS"] = self.threads
        if inference_precision and self.device == "CPU":
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        try:
            model = core.read_model(str(self.path), str(bin_path))
            self.compiled = core.compile_model(model, self.device, config)
        except Exception as exc:
            raise ModelLoadError(f"OpenVINO could not load {self.path} ({exc.__class__.__name__}: "
                                 f"{str(exc).splitlines()[0][:200]}); the IR is corrupt or truncated — "
                                 "re-export it with edgedet-convert or copy it again") from exc
        self.request = self.compiled.create_infer_request()
        self.inference_precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT")) \
            if self.device == "CPU" else None

    @property
    def runtime_version(self) -> str:
        return RUNTIME_VERSION

    @staticmethod
    def _spec(port) -> TensorSpec:
        return TensorSpec(port.get_any_name(), tuple(port.get_partial_shape().to_shape()),
                          np.dtype(port.get_element_type().to_dtype()))

    @property
    def inputs(self) -> list[TensorSpec]:
        return [self._spec(p) for p in self.compiled.inputs]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [self._spec(p) for p in self.compiled.outputs]

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        # share_inputs: the request reads the caller's array in place (a shared-memory Tensor, no
        # copy) when its dtype and layout are the input's, as the pipeline prepares them; the
        # array is only read, and only during this call.
        results = self.request.infer({0: batch}, share_inputs=True)
        # Copy: the request reuses its output buffers on the next call.
        return {port.get_any_name(): np.array(value, copy=True) for port, value in results.items()}

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "device": self.device, "inference_precision": self.inference_precision}
