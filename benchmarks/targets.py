"""Which formats and backends the benchmark runs, and on which runtime device.

``--device`` names a *target*; each runtime maps it to its own device, or lacks it:

=========  =====================  ============  ========  ==============================
--device   onnxruntime            OpenVINO      TFLite    torch (eager reference row)
=========  =====================  ============  ========  ==============================
cpu        CPUExecutionProvider   CPU           CPU       cpu
gpu        -                      GPU           -         cpu
npu        -                      NPU           -         cpu
auto       -                      AUTO          -         cpu
cuda       CUDAExecutionProvider  -             -         cuda (cpu if torch has no CUDA)
tensorrt   TensorrtExecution...   -             -         cuda (cpu if torch has no CUDA)
=========  =====================  ============  ========  ==============================

A runtime that lacks the device (or whose device is not present on this machine) does not abort
the run: its rows are reported with status ``unavailable`` and the reason, so the table says what
was not measured and why. Only when *no* selected runtime can use the device is it an error
(:class:`TargetError`, exit status 2).

The second half holds the *performance* targets of the issue that one run can check
(:func:`check_targets`): INT8 end to end against PyTorch eager, the time outside the model, INT8
against FP32 per backend, and shares of the measured peaks.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edgedet.backends import BackendError, available_backends

from benchmarks.results import TORCH, Row

__all__ = ["DEVICES", "E2E_SPEEDUP_TARGETS", "FORMAT_BACKENDS", "INT8_VS_FP32_TARGET", "INT8_VS_FP32_VARIANTS",
           "OUTSIDE_SHARE_TARGETS", "Check", "Target", "TargetError", "check_targets", "int8_shortfall",
           "registered_formats", "resolve_formats", "runtime_device", "torch_device"]

log = logging.getLogger(__name__)

#: Converter format -> the manifest backend that runs it.
FORMAT_BACKENDS: dict[str, str] = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "tflite"}
#: ``--device`` -> {backend: the runtime's own device name}.
DEVICES: dict[str, dict[str, str]] = {
    "cpu": {"onnxruntime": "cpu", "openvino": "CPU", "tflite": "cpu"},
    "gpu": {"openvino": "GPU"},
    "npu": {"openvino": "NPU"},
    "auto": {"openvino": "AUTO"},
    "cuda": {"onnxruntime": "cuda"},
    "tensorrt": {"onnxruntime": "tensorrt"},
}
#: Exporter modules that register themselves when imported (if ``converters`` does not yet).
_EXPORTER_MODULES = ("converters.onnx_exporter", "converters.openvino_exporter", "converters.tflite_exporter")


class TargetError(ValueError):
    """The request cannot run here at all (unknown names, or no runtime has the device)."""


@dataclass(frozen=True)
class Target:
    """One format to benchmark: its backend, the precisions asked of it, and whether it can run."""

    format: str
    backend: str
    precisions: tuple[str, ...]  # requested precisions (all of them; see ``makes``)
    makes: tuple[str, ...] | None  # precisions its exporter makes; None if no exporter is registered
    device: str | None  # the runtime's device name, None if unavailable
    reason: str | None  # why this target cannot run here at all (None if it can)
    export_reason: str | None  # why its artifacts cannot be exported here (None if they can)

    def export_precisions(self) -> tuple[str, ...]:
        """The requested precisions its exporter can make (none if it cannot export)."""
        if self.makes is None or self.export_reason or self.reason:
            return ()
        return tuple(p for p in self.precisions if p in self.makes)

    def precision_reason(self, precision: str) -> str | None:
        """Why ``precision`` cannot be exported (None if it can)."""
        if self.reason or self.export_reason:
            return self.reason or self.export_reason
        if self.makes is not None and precision not in self.makes:
            return f"the {self.format} exporter does not make {precision} (it makes {', '.join(self.makes)})"
        return None


def registered_formats() -> dict[str, type]:
    """``converters.EXPORTERS`` after importing the known exporter modules (format -> class)."""
    import converters

    for module in _EXPORTER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                log.debug("exporter module %s does not import: %s", module, exc)
        except Exception as exc:  # noqa: BLE001 - a broken exporter must not stop the benchmark
            log.warning("exporter module %s failed to import: %s: %s", module, type(exc).__name__, exc)
    return dict(converters.EXPORTERS)


def _device_reason(backend: str, device: str) -> tuple[str | None, str | None]:
    """(runtime device name, None) if ``backend`` can run on ``device`` here, else (None, reason)."""
    mapping = DEVICES[device]
    if backend not in mapping:
        has = [d for d, m in DEVICES.items() if backend in m]
        return None, f"{backend} has no '{device}' device (it runs on: {', '.join(has)})"
    name = mapping[backend]
    if backend not in available_backends():
        return None, f"{backend} runtime is not installed (pip install 'edgedet[{_extra(backend)}]')"
    try:
        if backend == "onnxruntime":
            import onnxruntime as ort

            from edgedet.backends.onnxruntime import PROVIDERS

            wanted = PROVIDERS[name][0]
            if wanted not in ort.get_available_providers():
                return None, (f"onnxruntime here has no {wanted} (available: "
                              f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
        elif backend == "openvino" and name != "AUTO":
            import openvino as ov

            present = ov.Core().available_devices
            if not any(d.startswith(name) for d in present):
                return None, f"OpenVINO sees no {name} device here (available: {', '.join(present)})"
    except (ImportError, BackendError) as exc:
        return None, f"{backend}: {exc}"
    return name, None


def runtime_device(backend: str, device: str) -> str | None:
    """The device name ``backend`` uses for ``--device`` (None if it has none)."""
    return DEVICES[device].get(backend)


def torch_device(device: str) -> str:
    """Where the PyTorch eager reference runs for ``--device``: cuda for cuda/tensorrt if present."""
    if device in ("cuda", "tensorrt"):
        import torch

        if torch.cuda.is_available():
            return "cuda"
        log.warning("--device %s: torch has no CUDA here; the PyTorch reference rows run on the CPU", device)
    return "cpu"


def resolve_formats(requested: Sequence[str] | None, precisions: Sequence[str], device: str, *,
                    skip_export: bool) -> list[Target]:
    """The targets to benchmark for ``--backends`` (format or backend names; None: the default).

    Default: every registered exporter whose packages are installed and whose runtime imports
    (with ``--skip-export``, also every installed runtime, to measure what exists).
    Raises :class:`TargetError` for unknown names or when no target can use ``device``.
    """
    if device not in DEVICES:
        raise TargetError(f"unknown --device {device!r}; choose one of {', '.join(DEVICES)}")
    exporters = registered_formats()
    runtimes = available_backends()
    by_backend = {b: f for f, b in FORMAT_BACKENDS.items()}
    if requested:
        names = []
        for item in requested:
            name = by_backend.get(item, item)
            if name not in FORMAT_BACKENDS and name not in exporters:
                raise TargetError(f"unknown backend {item!r}; choose from "
                                  f"{', '.join(sorted(set(FORMAT_BACKENDS) | set(exporters)))} "
                                  f"(or onnxruntime for onnx)")
            names.append(name)
        names = list(dict.fromkeys(names))
    else:
        names = [f for f, cls in exporters.items()
                 if not cls.missing_packages() and getattr(cls, "backend", FORMAT_BACKENDS.get(f)) in runtimes]
        if skip_export:
            names += [f for f, b in FORMAT_BACKENDS.items() if b in runtimes and f not in names]
        if not names:
            raise TargetError("no format can be benchmarked here: no exporter is registered with its "
                              "packages installed (pip install 'edgedet[all]')")

    targets = []
    for name in names:
        cls = exporters.get(name)
        backend = getattr(cls, "backend", None) or FORMAT_BACKENDS[name]
        makes = tuple(cls.precisions) if cls is not None else None
        runtime, reason = _device_reason(backend, device)
        export_reason = None
        if cls is None:
            export_reason = f"no {name} exporter is registered in converters"
        elif cls.missing_packages():
            export_reason = (f"the {name} exporter needs {', '.join(cls.missing_packages())} "
                             f"(pip install 'edgedet[convert]')")
        targets.append(Target(name, backend, tuple(precisions), makes, runtime, reason, export_reason))
    if all(t.reason for t in targets):
        raise TargetError(f"nothing can run with --device {device}: "
                          + "; ".join(f"{t.format}: {t.reason}" for t in targets))
    return targets


def _extra(backend: str) -> str:
    return {"onnxruntime": "onnx"}.get(backend, backend)


# ------------------------------------------------------------------------------------ performance targets

#: Best INT8 end-to-end p50 of a variant against its PyTorch eager FP32 end-to-end p50: at least.
E2E_SPEEDUP_TARGETS: dict[str, float] = {"lite0": 8.0, "d0": 6.0}
#: The time outside the model (``outside_share``: pre + decode p50 / end-to-end p50) of a variant's
#: INT8 rows: at most.
OUTSIDE_SHARE_TARGETS: dict[str, float] = {"lite0": 0.15}
#: INT8 model-only against the same backend's FP32 (``speedup_vs_fp32``): at least, for these variants.
INT8_VS_FP32_TARGET = 1.8
INT8_VS_FP32_VARIANTS: tuple[str, ...] = ("lite0", "d0")


@dataclass(frozen=True)
class Check:
    """One performance target checked on one run's rows."""

    target: str  # e2e_vs_torch | outside_share | int8_vs_fp32 | peak_share
    subject: str  # the variant or the row it is about
    value: float | None  # the measured figure; None: this run cannot tell
    limit: float
    at_least: bool  # met when value >= limit (else value <= limit)
    met: bool | None  # None: not measured in this run (``detail`` says why)
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line of the printed summary."""
        verdict = {True: "met   ", False: "MISSED", None: "n/a   "}[self.met]
        return f"{verdict} {self.target:<13} {self.subject:<28} {self.detail}"


#: Targets that are shares (shown in %); the others are speed-ups (shown as 1.8x).
_SHARES = ("outside_share", "peak_share")


def _check(target: str, subject: str, value: float | None, limit: float, at_least: bool, what: str,
           why_none: str = "") -> Check:
    if value is None:
        return Check(target, subject, None, limit, at_least, None, why_none)
    met = value >= limit if at_least else value <= limit
    shown = f"{100 * value:.1f}%" if target in _SHARES else f"{value:.2f}x"
    bound = f"{100 * limit:.0f}%" if target in _SHARES else f"{limit:g}x"
    return Check(target, subject, round(value, 4), limit, at_least, met,
                 f"{what} {shown} ({'>=' if at_least else '<='} {bound})")


def int8_shortfall(row: Row) -> str | None:
    """What to say on an INT8 row whose model-only speed-up over its backend's FP32 misses
    :data:`INT8_VS_FP32_TARGET` (None where it meets it or has no FP32 row to compare with)."""
    x = row.speedup_vs_fp32
    if row.precision != "int8" or x is None or x >= INT8_VS_FP32_TARGET:
        return None
    return (f"INT8 SLOWER than FP32 ({x:.2f}x)" if x < 1.0 else
            f"INT8 only {x:.2f}x FP32") + f", target {INT8_VS_FP32_TARGET:g}x"


def check_targets(rows: Sequence[Row]) -> list[Check]:
    """The performance targets that the measured ``rows`` of one run can check, for the variants the
    run covers: best INT8 end to end vs PyTorch eager (:data:`E2E_SPEEDUP_TARGETS`), the outside-
    the-model share of INT8 rows (:data:`OUTSIDE_SHARE_TARGETS`), INT8 vs FP32 model-only per
    backend (:data:`INT8_VS_FP32_TARGET`), and every share of a measured peak at most 100%."""
    variants = {r.variant for r in rows}
    ok = [r for r in rows if r.ok]
    checks: list[Check] = []
    for variant, limit in E2E_SPEEDUP_TARGETS.items():
        if variant not in variants:
            continue
        torch_row = next((r for r in ok if r.variant == variant and r.backend == TORCH and r.e2e_ms), None)
        int8 = [r for r in ok if r.variant == variant and r.precision == "int8" and r.e2e_ms]
        if torch_row is None or not int8:
            checks.append(_check("e2e_vs_torch", variant, None, limit, True, "", why_none=
                                 "no measured " + ("torch row" if torch_row is None else "INT8 row")))
            continue
        best = min(int8, key=lambda r: r.e2e_p50())
        checks.append(_check("e2e_vs_torch", f"{variant} (best: {best.backend})",
                             torch_row.e2e_p50() / best.e2e_p50(), limit, True,
                             f"torch e2e {torch_row.e2e_p50():.1f} ms / INT8 e2e {best.e2e_p50():.1f} ms ="))
    for variant, limit in OUTSIDE_SHARE_TARGETS.items():
        if variant not in variants:
            continue
        int8 = [r for r in ok if r.variant == variant and r.precision == "int8" and r.outside_share is not None]
        if not int8:
            checks.append(_check("outside_share", variant, None, limit, False, "", why_none="no measured INT8 row"))
        for r in int8:
            checks.append(_check("outside_share", r.name, r.outside_share, limit, False,
                                 f"pre {r.stage_p50('pre'):.2f} + decode {r.stage_p50('decode'):.2f} ms of "
                                 f"{r.e2e_p50():.1f} ms ="))
    for r in ok:
        if r.variant in INT8_VS_FP32_VARIANTS and r.precision == "int8" and r.backend != TORCH:
            checks.append(_check("int8_vs_fp32", r.name, r.speedup_vs_fp32, INT8_VS_FP32_TARGET, True,
                                 "model-only FP32 p50 / INT8 p50 =", why_none=f"no measured {r.backend} FP32 row"))
    shares = [r for r in ok if r.peak_share is not None]
    if shares:
        top = max(shares, key=lambda r: r.peak_share)
        # 100%: physically the most (above it, benchmarks.limits.share_problems names the probe as wrong).
        checks.append(_check("peak_share", f"max: {top.name}", top.peak_share, 1.0, False,
                             "share of its precision's measured peak"))
    return checks
