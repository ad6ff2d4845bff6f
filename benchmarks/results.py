"""The benchmark's data model: one :class:`Row` per measured (or skipped) artifact, and helpers.

A row's JSON form is :meth:`Row.to_dict`; ``benchmarks/schema.py`` describes it (JSON Schema) and
``benchmarks/README.md`` documents every field.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgedet.profiling import LatencyStats

__all__ = ["TORCH", "Matrix", "Row", "STATUSES", "stats_dict"]

#: The ``backend`` of the PyTorch eager reference rows: ``torch``, as in manifests.
TORCH = "torch"
#: Row statuses: measured; loading/running failed; the device or a package lacks it; not exported
#: (with ``--skip-export``); its export failed (parity or error).
STATUSES: tuple[str, ...] = ("ok", "failed", "unavailable", "missing", "export_failed")


def stats_dict(stats: LatencyStats | None) -> dict[str, float | int] | None:
    """``LatencyStats`` as a JSON dict (``p50, p90, p99, mean, min`` in ms and ``runs``), rounded."""
    if stats is None:
        return None
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(stats).items()}


@dataclass
class Row:
    """One line of the benchmark table: an artifact (or the PyTorch eager model) of one variant."""

    variant: str
    family: str
    phi: int
    backend: str  # onnxruntime | openvino | tflite | torch
    format: str | None  # the converter format (onnx | openvino | tflite); None for torch
    precision: str  # fp32 | fp16 | int8
    device: str | None  # the runtime device it ran on: cpu, CPU, GPU, cuda...
    status: str = "ok"
    reason: str | None = None  # why a row is not "ok"; or a note on an ok row
    input_size: int | None = None
    input_layout: str | None = None
    input_dtype: str | None = None
    batch: int | None = None
    num_classes: int | None = None
    size_mb: float | None = None
    weights: str | None = None  # reference | random | published | checkpoint
    weights_source: str | None = None
    runtime_version: str | None = None
    runtime_precision: str | None = None  # what computed, where the runtime says (OpenVINO: f32/bf16)
    load_seconds: float | None = None
    model_ms: dict[str, Any] | None = None  # backend.run on a preprocessed batch
    e2e_ms: dict[str, Any] | None = None  # preprocess + run + decode + NMS on the frame
    fps: float | None = None  # 1000 / e2e p50
    #: inside the end-to-end calls: {"pre", "infer", "decode", "residual"} -> latency (benchmarks.measure)
    stages_ms: dict[str, dict[str, Any]] | None = None
    outside_share: float | None = None  # (pre p50 + decode p50) / e2e p50: the time outside the model
    speedup_vs_torch: float | None = None  # torch (eager FP32) model p50 / this model p50
    speedup_vs_fp32: float | None = None  # the same backend's FP32 model p50 / this model p50 (fp16, int8 rows)
    parity: dict[str, Any] | None = None  # from the manifest, measured at export
    map: dict[str, Any] | None = None  # COCO metrics when a trained model and its val set exist
    macs: int | None = None
    gflops: float | None = None  # 2 * MACs / model p50
    peak_share: float | None = None  # gflops / GEMM peak, FP32 rows only
    artifact: str | None = None  # artifact directory
    sha256: str | None = None  # of the model file

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.variant, self.backend, self.precision)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def name(self) -> str:
        return f"{self.variant}/{self.backend}-{self.precision}"

    def model_p50(self) -> float | None:
        return None if self.model_ms is None else float(self.model_ms["p50"])

    def e2e_p50(self) -> float | None:
        return None if self.e2e_ms is None else float(self.e2e_ms["p50"])

    def stage_p50(self, stage: str) -> float | None:
        """p50 of one end-to-end stage (``pre``, ``infer``, ``decode``, ``residual``), ms."""
        return None if not self.stages_ms else float(self.stages_ms[stage]["p50"])

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Row":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Matrix:
    """The rows of one run, and whether Ctrl-C cut it short."""

    rows: list[Row] = field(default_factory=list)
    interrupted: bool = False
    not_measured: list[str] = field(default_factory=list)  # names of rows Ctrl-C left unmeasured
