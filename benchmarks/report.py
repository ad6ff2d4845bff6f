"""The benchmark's outputs: the printed table and context, ``results.json`` and ``results.csv``."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgedet._atomic import atomic_write_text

from benchmarks.measure import RESIDUAL, STAGES
from benchmarks.results import TORCH, Row
from benchmarks.schema import CSV_COLUMNS
from benchmarks.targets import Check, int8_shortfall

__all__ = ["csv_text", "format_checks", "format_context", "format_table", "machine_info", "peaks_header",
           "residual_notes", "write_csv", "write_json"]

log = logging.getLogger(__name__)

#: Distributions whose versions go into ``machine.packages``.
PACKAGES = ("edgedet", "numpy", "opencv-python-headless", "torch", "onnx", "onnxruntime", "onnxslim",
            "openvino", "nncf", "ai-edge-litert", "litert-torch", "ai-edge-quantizer", "faster-coco-eval",
            "pycocotools", "matplotlib", "tqdm")


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, cores, OS, Python (:func:`edgedet.profiling.device_fingerprint`), runtimes and packages."""
    from converters.base import package_versions
    from edgedet.backends import available_backends, runtime_version
    from edgedet.profiling import device_fingerprint

    runtimes = {}
    for name in available_backends():
        try:
            runtimes[name] = runtime_version(name)
        except Exception as exc:  # noqa: BLE001
            log.debug("runtime version of %s: %s", name, exc)
    try:
        import torch

        runtimes[TORCH] = torch.__version__
    except ImportError:
        pass
    return {**device_fingerprint(), "platform": platform.platform(), "memory_gb": _memory_gb(),
            "threads": threads, "load_average_start": load_average(), "runtimes": runtimes,
            "packages": package_versions(list(PACKAGES))}


# ------------------------------------------------------------------------------------ the table


def _ms(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    return f"{stats['p50']:.1f}/{stats['p90']:.1f}"


def _parity(row: Row) -> str:
    if row.backend == TORCH:
        return "reference" if row.ok else "-"
    p = row.parity or {}
    cos, det = p.get("cls_cosine"), p.get("detection_ap50")
    if cos is None and det is None:
        return "-"
    text = "/".join(["-" if cos is None else f"{cos:.5f}", "-" if det is None else f"{det:.3f}"])
    return text + ("" if p.get("passed", True) else " FAIL")


def _map(row: Row) -> str:
    if row.map is None:
        return "-"
    return f"{row.map['AP']:.3f}"


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _stages(row: Row) -> str:
    if not row.stages_ms:
        return "-"
    return "/".join(f"{row.stage_p50(stage):.1f}" for stage in STAGES)


def table_rows(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    """The printed table's cells (header first)."""
    header = ("variant", "backend", "prec", "input", "MB", "model p50/p90 ms", "e2e p50/p90 ms", "FPS",
              "pre/infer/decode ms", "out %", "x torch", "x fp32", "parity cls cos/det AP50", "mAP", "%peak", "note")
    out = [header]
    for r in rows:
        note = "" if r.ok else f"{r.status}: {r.reason or ''}"
        if r.ok:
            notes = []
            shortfall = int8_shortfall(r)
            if shortfall:
                notes.append(shortfall)
            if r.weights == "random":
                notes.append("random weights")
            if r.runtime_precision and r.runtime_precision.lower() not in ("f32", "fp32", "float32"):
                notes.append(f"computes {r.runtime_precision}")
            if r.reason:
                notes.append(r.reason)
            note = "; ".join(notes)
        out.append((r.variant, r.backend, r.precision, _num(r.input_size, "d"),
                    _num(r.size_mb, ".1f"), _ms(r.model_ms), _ms(r.e2e_ms), _num(r.fps, ".1f"),
                    _stages(r), _num(None if r.outside_share is None else 100 * r.outside_share, ".1f"),
                    _num(r.speedup_vs_torch, ".2f", "x"), _num(r.speedup_vs_fp32, ".2f", "x"), _parity(r), _map(r),
                    _num(None if r.peak_share is None else 100 * r.peak_share, ".0f", "%"), note[:90]))
    return out


def peaks_header(limits: dict[str, Any] | None) -> str:
    """The table's first line: the measured peaks each row's ``%peak`` is a share of."""
    if not limits:
        return "%peak: no measured peaks (--gemm-sizes none)"
    parts = [f"{kind.upper()} {limits[kind]['peak']:.0f} {unit} ({limits[kind]['winner']})"
             for kind, unit in (("fp32", "GFLOP/s"), ("int8", "GOPS")) if limits.get(kind)]
    return (f"measured peaks, {_threads(limits['threads'])}: {', '.join(parts) or 'none'}; "
            f"%peak = 2 x MACs / model-only p50 as a share of the row's precision's peak")


def format_table(rows: Sequence[Row], limits: dict[str, Any] | None = None) -> str:
    """An aligned text table, one line per row, grouped by variant, under a line with the measured
    peaks (``limits``, :mod:`benchmarks.limits`)."""
    cells = table_rows(rows)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    right = set(range(3, 15))  # the figures
    def line(c: Sequence[str]) -> str:
        return "  ".join(x.rjust(w) if i in right else x.ljust(w) for i, (x, w) in enumerate(zip(c, widths))).rstrip()
    lines = [peaks_header(limits), line(cells[0]), "  ".join("-" * w for w in widths)]
    previous = None
    for r, c in zip(rows, cells[1:]):
        if previous is not None and r.variant != previous:
            lines.append("")
        previous = r.variant
        lines.append(line(c))
    return "\n".join(lines)


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def format_limits(limits: dict[str, Any]) -> list[str]:
    """The measured peaks with their winning kernel, the bandwidth, and the theoretical peaks."""
    lines = []
    theory = limits.get("theoretical") or {}
    for kind, unit, bound in (("fp32", "GFLOP/s", theory.get("fp32_gflops")), ("int8", "GOPS", theory.get("int8_gops"))):
        entry = limits.get(kind)
        if not entry:
            continue
        others = ", ".join(f"{k} {max(v.values()):.0f}" for k, v in entry["by_kernel"].items())
        lines.append(f"{kind.upper()} peak ({_threads(limits['threads'])}): {entry['peak']:.1f} {unit} by {entry['winner']} "
                     f"[{others}]" + (f"; theoretical {bound:.0f} at the reported {theory['clock_ghz']} GHz"
                                      if bound else ""))
    memory = limits.get("memory")
    if memory:
        lines.append(f"Memory bandwidth: {memory['peak_gbps']:.1f} GB/s by {memory['winner']}")
    return lines


def format_context(context: dict[str, Any]) -> str:
    """The machine's limits and the fusion-ablation lines printed under the table."""
    lines = []
    found = context.get("limits")
    if found:
        lines.extend(format_limits(found))
    abl = context.get("fusion_ablation")
    if abl:
        lines.append(f"BiFPN fusion ablation ({abl['method']}, {_threads(abl['threads'])}, {abl['runs']} runs; "
                     f"paper: fast normalized {abl['paper']}):")
        for variant, v in abl["variants"].items():
            b, f = v["bifpn_ms"], v["full_ms"]
            lines.append(
                f"  {variant}@{v['image_size']}: BiFPN p50 fast {b['fast_normalized']['p50']:.2f} / softmax "
                f"{b['softmax']['p50']:.2f} / sum {b['sum']['p50']:.2f} ms -> fast is "
                f"{v['fast_vs_softmax_bifpn']:.3f}x softmax; full model fast {f['fast_normalized']['p50']:.1f} / "
                f"softmax {f['softmax']['p50']:.1f} / sum {f['sum']['p50']:.1f} ms -> "
                f"{v['fast_vs_softmax_full']:.3f}x")
    return "\n".join(lines)


#: A residual (end-to-end time outside the three stages) above this share of the end-to-end p50 is
#: worth a note: something outside Pipeline.prepare/backend.run/Pipeline.decode costs time.
RESIDUAL_NOTE_SHARE = 0.02


def residual_notes(rows: Sequence[Row]) -> list[str]:
    """A note with the largest residual of the run (what the stage timing did not cover), and one per
    row whose residual p50 is above :data:`RESIDUAL_NOTE_SHARE` of its end-to-end p50."""
    timed = [r for r in rows if r.ok and r.stages_ms and r.e2e_p50()]
    if not timed:
        return []
    share = {r.name: r.stage_p50(RESIDUAL) / r.e2e_p50() for r in timed}
    top = max(timed, key=lambda r: share[r.name])
    notes = [f"stage timing: the end-to-end time outside prepare/run/decode (residual p50) is at most "
             f"{top.stage_p50(RESIDUAL):.3f} ms, {100 * share[top.name]:.2f}% of the end-to-end p50 ({top.name})"]
    notes += [f"{r.name}: residual p50 {r.stage_p50(RESIDUAL):.2f} ms is {100 * share[r.name]:.1f}% of the "
              f"end-to-end p50: time is spent outside the pipeline's stages" for r in timed
              if share[r.name] > RESIDUAL_NOTE_SHARE]
    return notes


def format_checks(checks: Sequence[Check]) -> str:
    """The performance targets this run could check, one line each (met / MISSED / n/a)."""
    if not checks:
        return ""
    met = sum(c.met is True for c in checks)
    missed = sum(c.met is False for c in checks)
    return "\n".join([f"Targets: {met} met, {missed} missed, {len(checks) - met - missed} not measurable here",
                      *("  " + c.line() for c in checks)])


# ------------------------------------------------------------------------------------ files


def write_json(path: Path, results: dict[str, Any]) -> Path:
    """``results.json`` (atomically)."""
    atomic_write_text(path, json.dumps(_finite(results), indent=1, allow_nan=False, default=_jsonable) + "\n")
    return path


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats (e.g. an infinite parity error) replaced by None (JSON has none)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def csv_row(r: Row) -> dict[str, Any]:
    p = r.parity or {}
    m, e = r.model_ms or {}, r.e2e_ms or {}
    values = {
        "variant": r.variant, "family": r.family, "phi": r.phi, "backend": r.backend, "format": r.format,
        "precision": r.precision, "device": r.device, "status": r.status, "input_size": r.input_size,
        "size_mb": r.size_mb, "weights": r.weights, "model_p50_ms": m.get("p50"), "model_p90_ms": m.get("p90"),
        "e2e_p50_ms": e.get("p50"), "e2e_p90_ms": e.get("p90"), "runs": e.get("runs"), "fps": r.fps,
        **{f"{stage}_p50_ms": r.stage_p50(stage) for stage in (*STAGES, RESIDUAL)},
        "outside_share": r.outside_share, "speedup_vs_torch": r.speedup_vs_torch,
        "speedup_vs_fp32": r.speedup_vs_fp32, "cls_cosine": p.get("cls_cosine"),
        "box_cosine": p.get("box_cosine"), "top100_agreement": p.get("top100_agreement"),
        "detection_ap50": p.get("detection_ap50"),
        "map_ap": None if r.map is None else r.map.get("AP"), "map_ap50": None if r.map is None else r.map.get("AP50"),
        "gmacs": None if r.macs is None else round(r.macs / 1e9, 4), "gflops": r.gflops,
        "peak_share": r.peak_share, "runtime_precision": r.runtime_precision,
        "runtime_version": r.runtime_version, "load_seconds": r.load_seconds, "reason": r.reason,
    }
    return {k: ("" if values[k] is None else values[k]) for k in CSV_COLUMNS}


def csv_text(rows: Sequence[Row]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(csv_row(r))
    return buf.getvalue()


def write_csv(path: Path, rows: Sequence[Row]) -> Path:
    """``results.csv`` (atomically): :data:`benchmarks.schema.CSV_COLUMNS`, one line per row."""
    atomic_write_text(path, csv_text(rows))
    return path
