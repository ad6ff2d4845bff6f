"""The measurement matrix: per variant, the PyTorch eager reference, then every artifact.

Rows are planned first (:func:`plan_rows`): each requested (variant, backend, precision) becomes a
row to measure, or a row that says why it is not measured (``unavailable``, ``missing``,
``export_failed``). :func:`run_matrix` then measures them one at a time: load, time, optional mAP,
release, ``gc.collect()``. Only one artifact is loaded at any moment. Ctrl-C stops the loop; the
rows measured so far are kept (:attr:`Matrix.interrupted`).
"""
from __future__ import annotations

import gc
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgedet.config import get_config
from edgedet.detector import Artifact, find_artifacts
from edgedet.manifest import WeightsInfo

from benchmarks import accuracy
from benchmarks.exports import ExportSummary, VariantWeights
from benchmarks.limits import peak_for
from benchmarks.measure import Timing, load_detector, time_detector, time_pipeline, torch_pipeline
from benchmarks.results import TORCH, Matrix, Row, stats_dict
from benchmarks.targets import Target, torch_device

__all__ = ["MatrixSettings", "Planned", "collect_artifacts", "finalize", "plan_rows", "run_matrix"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatrixSettings:
    """How every row is measured."""

    device: str  # the --device target
    threads: int
    warmup: int
    runs: int
    max_seconds: float | None  # per timed loop
    limits: dict | None = None  # the measured peaks (benchmarks.limits), for each row's share of peak
    eval_set: accuracy.EvalSet | None = None  # --coco-ann/--coco-images
    map_limit: int | None = None
    map_cache: Path | None = None
    with_map: bool = True


@dataclass
class Planned:
    """A row and what measuring it needs (an artifact; or nothing for the PyTorch row)."""

    row: Row
    artifact: Artifact | None = None
    measure: bool = True


def collect_artifacts(models_dir: Path, variants: Sequence[str], backends: Sequence[str],
                      precisions: Sequence[str]) -> dict[tuple[str, str, str], Artifact]:
    """The artifacts under ``models_dir`` for the requested combinations (first found wins)."""
    found: dict[tuple[str, str, str], Artifact] = {}
    for a in find_artifacts(models_dir):
        m = a.manifest
        key = (m.variant, m.backend, m.precision)
        if m.variant in variants and m.backend in backends and m.precision in precisions and key not in found:
            found[key] = a
    return found


def _weights_kind(artifact: Artifact, chosen: VariantWeights | None) -> str:
    w = artifact.manifest.weights
    if w.random:
        return "random"
    if chosen is not None and w.source == chosen.spec:
        return chosen.kind
    return "checkpoint"


def _base_row(variant: str, backend: str, fmt: str | None, precision: str, device: str | None) -> Row:
    config = get_config(variant)
    return Row(variant=variant, family=config.family, phi=config.phi, backend=backend, format=fmt,
               precision=precision, device=device, input_size=config.image_size)


def _artifact_row(a: Artifact, fmt: str, device: str | None, chosen: VariantWeights | None) -> Row:
    m = a.manifest
    row = _base_row(m.variant, m.backend, fmt, m.precision, device)
    row.input_size, row.input_layout, row.input_dtype = m.image_size, m.input.layout, m.input.dtype
    row.batch, row.num_classes = m.input.batch_size, m.num_classes
    row.size_mb = round(sum(p.stat().st_size for p in m.file_paths(a.directory) if p.is_file()) / 1e6, 3)
    row.weights, row.weights_source = _weights_kind(a, chosen), m.weights.source
    row.parity = dict(m.parity) if m.parity else None
    row.artifact, row.sha256 = str(a.directory), a.sha256
    return row


def plan_rows(variants: Sequence[str], targets: Sequence[Target], precisions: Sequence[str],
              artifacts: Mapping[tuple[str, str, str], Artifact], weights: Mapping[str, VariantWeights],
              exports: ExportSummary, device: str) -> list[Planned]:
    """One planned row per variant (PyTorch) and per (variant, format, precision) requested."""
    planned: list[Planned] = []
    for variant in variants:
        row = _base_row(variant, TORCH, None, "fp32", torch_device(device))
        planned.append(Planned(row))
        for t in targets:
            for precision in precisions:
                a = artifacts.get((variant, t.backend, precision))
                failure = exports.failure(variant, t.backend, precision)
                if t.reason:
                    row = _artifact_row(a, t.format, None, weights.get(variant)) if a else \
                        _base_row(variant, t.backend, t.format, precision, None)
                    row.status, row.reason = "unavailable", t.reason
                    planned.append(Planned(row, a, measure=False))
                elif failure is not None:
                    row = _base_row(variant, t.backend, t.format, precision, t.device)
                    row.status, row.reason = "export_failed", failure
                    planned.append(Planned(row, None, measure=False))
                elif a is not None:
                    planned.append(Planned(_artifact_row(a, t.format, t.device, weights.get(variant)), a))
                else:
                    row = _base_row(variant, t.backend, t.format, precision, t.device)
                    why = t.precision_reason(precision)
                    if why is not None:
                        row.status, row.reason = "unavailable", why
                    else:
                        row.status = "missing"
                        row.reason = ("not exported (--skip-export)" if exports.skipped else
                                      "not found after the export step")
                    planned.append(Planned(row, None, measure=False))
    return planned


# ------------------------------------------------------------------------------------ PyTorch


def _torch_model(variant: str, planned: Sequence[Planned], chosen: VariantWeights | None) -> tuple[Any, str, Any, str | None]:
    """The PyTorch model of ``variant``: the architecture, class count and weights of its artifacts.

    Returns (model, weights kind, :class:`converters.weights.ResolvedWeights`, note). Trained
    weights (a checkpoint named in the artifacts' manifests, or the benchmark's choice when there
    are no artifacts) are loaded, so that mAP compares. Random-weight artifacts get the same
    realistic random weights the converter made them from (reused from the export step when it ran
    in this process; else rebuilt: 4 s for Lite1, 16 s for D1 here), so that the row's decode + NMS
    sees the candidates the artifacts' rows see (the plain initialization passes none).
    """
    from converters.weights import build_model, resolve_weights

    manifests = [p.artifact.manifest for p in planned if p.artifact is not None and p.row.variant == variant]
    manifests.sort(key=lambda m: m.precision != "fp32")
    note = None
    if manifests:
        num_classes, size = manifests[0].num_classes, manifests[0].image_size
        source = None if manifests[0].weights.random else manifests[0].weights.source
    else:
        source = chosen.spec if chosen is not None and not chosen.random else None
        num_classes, size = None, get_config(variant).image_size
    resolved, kind = None, "random"
    if source is not None:
        try:
            resolved = resolve_weights(source, variant, allow_random=False, progress=False)
            kind = chosen.kind if chosen is not None and chosen.spec == source else "checkpoint"
        except Exception as exc:  # noqa: BLE001 - latency does not depend on weights: go on
            note = f"PyTorch row: checkpoint {source} unavailable ({exc}); random weights used"
    if resolved is None:
        resolved = resolve_weights("random", variant, allow_random=True)
    num_classes = num_classes or resolved.num_classes or 90
    model = build_model(variant, num_classes, resolved, image_size=size)
    return model, kind, resolved, note


def _measure_torch(p: Planned, planned: Sequence[Planned], frames: Sequence[np.ndarray], s: MatrixSettings,
                   chosen: VariantWeights | None, cache: accuracy.MapCache) -> tuple[int | None, str | None]:
    """Fill the PyTorch row; return the variant's MACs (for every row's GFLOP/s) and a note."""
    import torch

    from edgedet.model.complexity import count_macs

    row = p.row
    started = time.perf_counter()
    model, row.weights, resolved, note = _torch_model(row.variant, planned, chosen)
    row.weights_source = resolved.source
    row.num_classes, row.input_size = int(model.config.num_classes), int(model.image_size)
    row.input_layout, row.input_dtype, row.batch = "NCHW", "float32", 1
    row.size_mb = round(sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6, 3)
    row.runtime_version = torch.__version__
    macs = count_macs(model, int(model.image_size))
    pipe = torch_pipeline(model, device=row.device or "cpu",
                          weights=WeightsInfo(resolved.source, resolved.sha256, resolved.random))
    row.load_seconds = round(time.perf_counter() - started, 3)
    timing = time_pipeline(pipe, frames, warmup=s.warmup, runs=s.runs, max_seconds=s.max_seconds)
    _fill_timing(row, timing)
    eval_set = _eval_set(row, chosen, s)
    if eval_set is not None:
        row.map = accuracy.evaluate_torch(model, eval_set, cache, weights_key=resolved.key,
                                          labels=chosen.labels if chosen else None, device=row.device or "cpu")
    del pipe, model
    return macs, note


# ------------------------------------------------------------------------------------ helpers


def _fill_timing(row: Row, timing: Timing) -> None:
    row.model_ms, row.e2e_ms = stats_dict(timing.model), stats_dict(timing.e2e)
    row.fps = round(1000.0 / timing.e2e.p50, 2) if timing.e2e.p50 > 0 else None
    if timing.stages is not None:
        row.stages_ms = {name: stats_dict(stats) for name, stats in timing.stages.items()}
        outside = timing.stages["pre"].p50 + timing.stages["decode"].p50
        row.outside_share = round(outside / timing.e2e.p50, 4) if timing.e2e.p50 > 0 else None
    row.status = "ok"


def _eval_set(row: Row, chosen: VariantWeights | None, s: MatrixSettings) -> accuracy.EvalSet | None:
    """The split to score this row on, or None (random weights, no split, mAP off)."""
    if not s.with_map or row.weights == "random":
        return None
    if s.eval_set is not None:
        return s.eval_set
    if chosen is not None and chosen.val_ann is not None and chosen.val_images is not None \
            and row.weights_source == chosen.spec:
        return accuracy.EvalSet(chosen.val_ann, chosen.val_images, "reference val split", s.map_limit,
                                chosen.category_ids)
    return None


def _type_name(value: Any) -> str:
    """``"float32"`` from OpenVINO's ``<Type: 'float32'>`` (or the plain string)."""
    text = str(value)
    match = re.search(r"'([^']+)'", text)
    return match.group(1) if match else text


def _measure_artifact(p: Planned, frames: Sequence[np.ndarray], s: MatrixSettings,
                      chosen: VariantWeights | None, cache: accuracy.MapCache) -> None:
    row, artifact = p.row, p.artifact
    assert artifact is not None
    started = time.perf_counter()
    detector = load_detector(artifact, device=s.device, threads=s.threads)
    try:
        row.load_seconds = round(time.perf_counter() - started, 3)
        info = detector.pipeline.backend.describe()
        row.runtime_version = str(info.get("version")) if info.get("version") is not None else None
        if info.get("inference_precision"):
            row.runtime_precision = _type_name(info["inference_precision"])
        timing = time_detector(detector, frames, warmup=s.warmup, runs=s.runs, max_seconds=s.max_seconds)
        _fill_timing(row, timing)
        eval_set = _eval_set(row, chosen, s)
        if eval_set is not None:
            row.map = accuracy.evaluate_detector(detector, eval_set, cache, runtime=row.runtime_version or "",
                                                 device=s.device)
    finally:
        del detector
        gc.collect()


def run_matrix(planned: Sequence[Planned], frames: Sequence[np.ndarray], settings: MatrixSettings,
               weights: Mapping[str, VariantWeights], *, progress: bool = True) -> Matrix:
    """Measure every planned row in order; Ctrl-C keeps what was measured (see module doc)."""
    import torch

    matrix = Matrix()
    todo = [p for p in planned if p.measure]
    cache = accuracy.MapCache(settings.map_cache)
    why_no_map = accuracy.evaluation_available() if settings.with_map else None
    if why_no_map:
        log.warning("no mAP: %s", why_no_map)
        settings = replace(settings, with_map=False)
    macs: dict[str, int | None] = {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    bar = _bar(len(todo), progress)
    measured = 0
    try:
        for p in planned:
            row = p.row
            if not p.measure:
                matrix.rows.append(row)
                continue
            bar.set_description(row.name)
            chosen = weights.get(row.variant)
            try:
                if row.backend == TORCH:
                    macs[row.variant], note = _measure_torch(p, planned, frames, settings, chosen, cache)
                    if note:
                        row.reason = note
                else:
                    _measure_artifact(p, frames, settings, chosen, cache)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad artifact must not end the benchmark
                row.status = "failed"
                row.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                log.error("%s: %s", row.name, row.reason)
                log.debug("%s: traceback", row.name, exc_info=True)
            row.macs = macs.get(row.variant)
            matrix.rows.append(row)
            measured += 1
            bar.update(1)
            gc.collect()
    except KeyboardInterrupt:
        matrix.interrupted = True
        done = {id(r) for r in matrix.rows}
        matrix.not_measured = [p.row.name for p in todo if id(p.row) not in done]
        log.warning("interrupted: %d of %d rows measured", measured, len(todo))
    finally:
        bar.close()
        torch.set_num_threads(previous_threads)
    finalize(matrix.rows, settings.limits)
    return matrix


def finalize(rows: Sequence[Row], limits: dict | None) -> None:
    """Fill the derived columns: speed-up vs the variant's torch row and vs the same backend's FP32
    row (model-only), G(FL)OP/s, and the share of the measured peak of the row's precision (FP32
    rows of the FP32 peak, INT8 rows of the INT8 peak)."""
    torch_p50 = {r.variant: r.model_p50() for r in rows if r.backend == TORCH and r.ok}
    fp32_p50 = {(r.variant, r.backend): r.model_p50() for r in rows if r.precision == "fp32" and r.ok}
    macs = {r.variant: r.macs for r in rows if r.macs}
    for r in rows:
        if not r.ok:
            continue
        p50 = r.model_p50()
        if r.macs is None:
            r.macs = macs.get(r.variant)
        base = torch_p50.get(r.variant)
        if base and p50:
            r.speedup_vs_torch = round(base / p50, 3)
        fp32 = fp32_p50.get((r.variant, r.backend))
        if r.precision != "fp32" and fp32 and p50:
            r.speedup_vs_fp32 = round(fp32 / p50, 3)
        if r.macs and p50:
            r.gflops = round(2.0 * r.macs / (p50 / 1000.0) / 1e9, 2)
            peak = peak_for(limits, r.precision)
            if peak:
                r.peak_share = round(r.gflops / peak, 4)


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_description(self, text: str) -> None: ...
    def close(self) -> None: ...


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="row", dynamic_ncols=True, desc="benchmark")
