"""The benchmark's PNG plots (matplotlib, Agg backend: no display needed).

* ``latency.png`` — end-to-end p50 vs variant (φ), one line per backend × precision, each family
  (Lite, D) its own line segment; PyTorch eager dashed.
* ``accuracy_vs_latency.png`` — mAP vs end-to-end p50, one panel per backend, the Pareto front
  over all rows drawn in every panel; made when some row has an mAP. Otherwise
  ``parity_vs_latency.png`` — top-100 agreement with PyTorch FP32 vs latency: what quantization
  costs in fidelity, since random weights have no accuracy to plot.
* ``stages.png`` — where each row's end-to-end time goes: stacked bars of the p50 of preprocess,
  inference, decode + NMS and the residual, labelled with the share outside the model.
* ``peak_share.png`` — achieved GFLOP/s of the FP32 and INT8 rows against the measured peaks.
* ``fusion_ablation.png`` — BiFPN latency per fusion method and variant.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.measure import RESIDUAL, STAGES
from benchmarks.results import TORCH, Row

__all__ = ["pareto_front", "plot_all", "plot_stages"]

log = logging.getLogger(__name__)

_PRECISION_STYLE = {"fp32": "o", "fp16": "s", "int8": "^"}
_BACKEND_COLOR = {"onnxruntime": "tab:blue", "openvino": "tab:purple", "tflite": "tab:orange", TORCH: "black"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log(axis: Any) -> None:
    """A log axis labelled 50, 100, 200 rather than 5x10^1 (ranges here are narrow)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _variant_order(rows: Sequence[Row]) -> list[str]:
    seen = {(r.family, r.phi, r.variant) for r in rows}
    return [v for _, _, v in sorted(seen, key=lambda t: (t[0] != "lite", t[1]))]


def plot_latency(rows: Sequence[Row], path: Path) -> Path | None:
    """End-to-end p50 vs variant per backend × precision."""
    ok = [r for r in rows if r.ok and r.e2e_ms]
    if not ok:
        return None
    plt = _pyplot()
    order = _variant_order(ok)
    x_of = {v: i for i, v in enumerate(order)}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(order) + 4), 4.8))
    series = sorted({(r.backend, r.precision) for r in ok}, key=lambda s: (s[0] == TORCH, s))
    for backend, precision in series:
        pts = sorted(((x_of[r.variant], r.e2e_p50(), r.family) for r in ok
                      if (r.backend, r.precision) == (backend, precision)), key=lambda t: t[0])
        label = f"{backend} {precision}" if backend != TORCH else "torch fp32 (eager)"
        for i, family in enumerate(sorted({f for _, _, f in pts})):
            xs = [x for x, _, f in pts if f == family]
            ys = [y for _, y, f in pts if f == family]
            ax.plot(xs, ys, marker=_PRECISION_STYLE.get(precision, "o"), color=_BACKEND_COLOR.get(backend),
                    linestyle="--" if backend == TORCH else {"fp32": "-", "fp16": ":", "int8": "-."}[precision],
                    label=label if i == 0 else None)
    ax.set_xticks(range(len(order)), order)
    ax.set_yscale("log")
    _plain_log(ax.yaxis)
    ax.set_xlabel("variant (Lite and D families, by φ)")
    ax.set_ylabel("end-to-end latency p50 (ms, log)")
    ax.set_title("End-to-end latency (preprocess + inference + decode + NMS)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, score) points no other point beats on both (lower latency, higher score)."""
    front: list[tuple[float, float]] = []
    best = -math.inf
    for lat, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if score > best:
            front.append((lat, score))
            best = score
    return front


def plot_accuracy(rows: Sequence[Row], path: Path) -> Path | None:
    """mAP vs end-to-end p50, a panel per backend, with the Pareto front over all rows."""
    ok = [r for r in rows if r.ok and r.e2e_ms and r.map]
    if not ok:
        return None
    plt = _pyplot()
    backends = sorted({r.backend for r in ok}, key=lambda b: (b == TORCH, b))
    fig, axes = plt.subplots(1, len(backends), figsize=(4.5 * len(backends), 4.2), sharey=True, squeeze=False)
    front = pareto_front([(r.e2e_p50(), r.map["AP"]) for r in ok])
    for ax, backend in zip(axes[0], backends):
        for r in ok:
            if r.backend != backend:
                continue
            ax.scatter(r.e2e_p50(), r.map["AP"], marker=_PRECISION_STYLE.get(r.precision, "o"),
                       color=_BACKEND_COLOR.get(backend), label=r.precision)
            ax.annotate(r.variant, (r.e2e_p50(), r.map["AP"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.plot([p[0] for p in front], [p[1] for p in front], color="gray", alpha=0.6, drawstyle="steps-post",
                label="Pareto front (all)")
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
        ax.set_title(backend)
        ax.set_xlabel("end-to-end p50 (ms, log)")
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7)
    axes[0][0].set_ylabel("COCO AP")
    fig.suptitle("Accuracy vs latency")
    return _save(fig, path)


def plot_parity(rows: Sequence[Row], path: Path) -> Path | None:
    """Top-100 agreement with PyTorch FP32 vs end-to-end p50 (when no row has an mAP)."""
    ok = [r for r in rows if r.ok and r.e2e_ms and r.parity and r.parity.get("top100_agreement") is not None]
    if not ok:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in ok:
        ax.scatter(r.e2e_p50(), r.parity["top100_agreement"], marker=_PRECISION_STYLE.get(r.precision, "o"),
                   color=_BACKEND_COLOR.get(r.backend), label=f"{r.backend} {r.precision}")
        ax.annotate(r.variant, (r.e2e_p50(), r.parity["top100_agreement"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    front = pareto_front([(r.e2e_p50(), r.parity["top100_agreement"]) for r in ok])
    ax.plot([p[0] for p in front], [p[1] for p in front], color="gray", alpha=0.6, drawstyle="steps-post",
            label="Pareto front")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    ax.set_xscale("log")
    _plain_log(ax.xaxis)
    ax.set_xlabel("end-to-end p50 (ms, log)")
    ax.set_ylabel("top-100 agreement with PyTorch FP32")
    ax.set_title("Fidelity vs latency (no mAP: random weights or no val split)")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


_STAGE_STYLE = {"pre": ("preprocess (Pipeline.prepare)", "tab:green"), "infer": ("inference (backend.run)", "tab:blue"),
                "decode": ("decode + NMS (Pipeline.decode)", "tab:red"), RESIDUAL: ("residual (glue)", "lightgray")}


def plot_stages(rows: Sequence[Row], path: Path) -> Path | None:
    """Stacked horizontal bars per row, one panel (own linear scale) per variant: p50 of each
    end-to-end stage (ms), the end-to-end p50 marked, and the outside-the-model share beside each
    bar. The parts' p50s need not add up exactly to the end-to-end p50 (a median of sums is not
    the sum of medians)."""
    ok = [r for r in rows if r.ok and r.stages_ms]
    if not ok:
        return None
    plt = _pyplot()
    variants = _variant_order(ok)
    groups = [sorted((r for r in ok if r.variant == v), key=lambda r: (r.backend == TORCH, r.backend, r.precision))
              for v in variants]
    # One panel per variant, and a last row for the legend alone (clear of the bars).
    fig, axes = plt.subplots(len(groups) + 1, 1, figsize=(9, sum(0.3 * len(g) + 0.9 for g in groups) + 1.2),
                             squeeze=False, gridspec_kw={"height_ratios": [len(g) + 1 for g in groups] + [1.2]})
    for ax, group in zip(axes[:-1, 0], groups):
        labels = [f"{r.backend} {r.precision}" for r in group]
        left = [0.0] * len(group)
        for stage in (*STAGES, RESIDUAL):
            widths = [r.stage_p50(stage) for r in group]
            name, color = _STAGE_STYLE[stage]
            ax.barh(labels, widths, left=left, color=color, label=name)
            left = [a + b for a, b in zip(left, widths)]
        e2e = [r.e2e_p50() for r in group]
        ax.scatter(e2e, labels, marker="|", color="black", s=150, label="end-to-end p50", zorder=3)
        for y, (r, x) in enumerate(zip(group, left)):
            ax.annotate(f"{100 * r.outside_share:.0f}% outside", (max(x, r.e2e_p50()), y), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, max(max(left), max(e2e)) * 1.3)
        ax.set_ylabel(group[0].variant)
        ax.grid(True, axis="x", alpha=0.3)
    axes[-2, 0].set_xlabel("p50 of each stage inside the end-to-end call (ms)")
    axes[-1, 0].axis("off")
    axes[-1, 0].legend(*axes[0, 0].get_legend_handles_labels(), loc="center", ncol=3, fontsize=7)
    axes[0, 0].set_title("Where the end-to-end time goes")
    return _save(fig, path)


def plot_peak_share(rows: Sequence[Row], limits: dict[str, Any], path: Path) -> Path | None:
    """Share of the measured peak of their precision (FP32, INT8) reached by the rows, one panel each."""
    panels = [(kind, [r for r in rows if r.ok and r.precision == kind and r.peak_share is not None])
              for kind in ("fp32", "int8") if limits.get(kind)]
    panels = [(kind, ok) for kind, ok in panels if ok]
    if not panels:
        return None
    plt = _pyplot()
    height = 0.3 * max(len(ok) for _, ok in panels) + 1.6
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), height), squeeze=False)
    for ax, (kind, ok) in zip(axes[0], panels):
        peak = limits[kind]
        ax.barh([f"{r.variant} {r.backend}" for r in ok], [100 * r.peak_share for r in ok],
                color=[_BACKEND_COLOR.get(r.backend) for r in ok])
        ax.axvline(100, color="red", linestyle="--",
                   label=f"measured {kind.upper()} peak {peak['peak']:.0f} G{'FLOP' if kind == 'fp32' else 'OP'}/s "
                         f"({peak['winner']})")
        ax.invert_yaxis()
        ax.set_xlabel(f"% of the {kind.upper()} peak (2 x MACs / model-only p50)")
        ax.set_title(f"{kind.upper()} rows")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Share of this machine's measured peak")
    return _save(fig, path)


def plot_fusion(ablation: dict[str, Any] | None, path: Path) -> Path | None:
    """BiFPN p50 per fusion method, per variant."""
    if not ablation or not ablation.get("variants"):
        return None
    plt = _pyplot()
    variants = list(ablation["variants"])
    fusions = ["fast_normalized", "softmax", "sum"]
    fig, ax = plt.subplots(figsize=(2.5 * len(variants) + 3, 4))
    width = 0.8 / len(fusions)
    for j, fusion in enumerate(fusions):
        ys = [ablation["variants"][v]["bifpn_ms"][fusion]["p50"] for v in variants]
        ax.bar([i + j * width for i in range(len(variants))], ys, width, label=fusion)
    ax.set_xticks([i + width for i in range(len(variants))], variants)
    ax.set_ylabel("BiFPN p50 (ms), PyTorch eager")
    threads = ablation['threads']
    ax.set_title(f"BiFPN fusion ablation ({threads} thread{'' if threads == 1 else 's'})")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_all(rows: Sequence[Row], context: dict[str, Any], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Every plot that has data; returns (written files, notes about plots not made)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    notes: list[str] = []
    found_limits = context.get("limits") or {}
    jobs = [
        ("latency.png", lambda p: plot_latency(rows, p), "no measured rows: no latency plot"),
        ("accuracy_vs_latency.png", lambda p: plot_accuracy(rows, p), None),
        ("stages.png", lambda p: plot_stages(rows, p), None),
        ("peak_share.png", lambda p: plot_peak_share(rows, found_limits, p),
         "no FP32/INT8 row with MACs or no measured peak: no peak-share plot"),
        ("fusion_ablation.png", lambda p: plot_fusion(context.get("fusion_ablation"), p), None),
    ]
    for name, make, missing in jobs:
        try:
            path = make(out_dir / name)
        except Exception as exc:  # noqa: BLE001 - a plot must never lose the results
            log.warning("plot %s failed: %s: %s", name, type(exc).__name__, exc)
            notes.append(f"plot {name} failed: {exc}")
            continue
        if path is not None:
            written.append(path)
        elif name == "accuracy_vs_latency.png":
            parity = plot_parity(rows, out_dir / "parity_vs_latency.png")
            notes.append("no row has an mAP (random weights or no val split): parity_vs_latency.png "
                         "shows fidelity to PyTorch FP32 instead of accuracy")
            if parity is not None:
                written.append(parity)
        elif missing:
            notes.append(missing)
    return written, notes
