"""Weights for each variant, and the exports the benchmark needs (through :func:`converters.convert`).

Weights (``--weights auto``, the default): a trained reference checkpoint
``<edgedet cache>/reference/<variant>/best.pth`` (written by the reference-training script, with
its class names, class count and validation split in the checkpoint's metadata) where one exists,
else the converter's *realistic random* weights — labelled latency-only everywhere, since
latency is a property of architecture, not weights (docs/ARCHITECTURE.md). ``random``, ``reference``,
``published`` or a checkpoint path force one source for every variant.

Exports go to the models directory (default ``<edgedet cache>/bench``); the converter skips any
artifact that is already up to date, so a warm run spends seconds here and a cold run reports
its export time separately.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedet.hub import cache_dir

from benchmarks.targets import Target

__all__ = ["BEST_NAME", "ExportSummary", "VariantWeights", "choose_weights", "default_models_dir",
           "export_all", "reference_checkpoint"]

log = logging.getLogger(__name__)

BEST_NAME = "best.pth"
#: Calibration frames per INT8 artifact (the count docs/TOOLCHAIN.md's working TFLite INT8 path used).
DEFAULT_CALIBRATION_COUNT = 32


def default_models_dir() -> Path:
    """``<edgedet cache>/bench`` (``$EDGEDET_CACHE/bench`` or ``~/.cache/edgedet/bench``)."""
    return cache_dir() / "bench"


def reference_checkpoint(variant: str, cache_root: Path | None = None) -> Path | None:
    """``<cache>/reference/<variant>/best.pth`` if it exists."""
    path = (cache_root or cache_dir()) / "reference" / variant / BEST_NAME
    return path if path.is_file() else None


@dataclass(frozen=True)
class VariantWeights:
    """Where one variant's weights come from, and what goes with them (labels, val split)."""

    variant: str
    kind: str  # reference | random | published | checkpoint
    spec: str  # the converter's weights= argument
    labels: tuple[str, ...] | None = None
    category_ids: tuple[int, ...] | None = None
    val_ann: Path | None = None
    val_images: Path | None = None
    trained_image_size: int | None = None
    val_map: float | None = None  # the AP the training run measured on its val split
    calibration: str = "synthetic"
    notes: tuple[str, ...] = ()

    @property
    def random(self) -> bool:
        return self.kind == "random"

    def describe(self) -> dict[str, Any]:
        """The JSON form (``settings.weights[variant]``)."""
        return {"kind": self.kind, "source": self.spec, "num_labels": None if self.labels is None else len(self.labels),
                "val_ann": None if self.val_ann is None else str(self.val_ann),
                "val_images": None if self.val_images is None else str(self.val_images),
                "trained_image_size": self.trained_image_size, "val_map": self.val_map,
                "calibration": self.calibration, "notes": list(self.notes)}


def _existing(path: Any, base: Path) -> Path | None:
    if not path:
        return None
    p = Path(str(path)).expanduser()
    for candidate in (p, base / p):
        if candidate.exists():
            return candidate
    return None


def _from_checkpoint(variant: str, path: Path, kind: str, calibration: str) -> VariantWeights:
    """Read a checkpoint's edgedet metadata (labels, val split, image size) if it has any."""
    from edgedet.config import get_config
    from edgedet.model.checkpoint import load_metadata

    try:
        meta = load_metadata(path)
    except Exception as exc:  # noqa: BLE001 - a plain state_dict or unreadable: the converter says more
        log.warning("%s: cannot read metadata of %s (%s)", variant, path, exc)
        meta = {}
    notes = []
    cfg = meta.get("train_config") or {}
    base = path.parent
    val_ann, val_images = _existing(cfg.get("val_ann"), base), _existing(cfg.get("val_images"), base)
    if (cfg.get("val_ann") or cfg.get("val_images")) and (val_ann is None or val_images is None):
        notes.append(f"its val split ({cfg.get('val_ann')}, {cfg.get('val_images')}) is not on this machine: no mAP")
    size = meta.get("image_size")
    native = get_config(variant).image_size
    if size and int(size) != native:
        notes.append(f"trained at {size} px; artifacts are exported at the native {native} px, so mAP "
                     f"may differ from the training run's")
    if meta.get("variant") and meta["variant"] != variant:
        raise ValueError(f"{path} holds a {meta['variant']} model, not {variant}")
    if calibration == "auto":
        calibration = "synthetic"
        images = _existing(cfg.get("train_images"), base)
        if images is not None:
            from converters.calibration import CalibrationError, open_calibration_source

            try:
                open_calibration_source(images)
                calibration = str(images)
            except CalibrationError as exc:
                log.info("%s: training images %s not usable for calibration (%s); using synthetic",
                         variant, images, exc)
    labels = tuple(str(n) for n in meta["class_names"]) if meta.get("class_names") else None
    ids = tuple(int(i) for i in meta["category_ids"]) if meta.get("category_ids") else None
    val_map = meta.get("val_map")
    return VariantWeights(variant, kind, str(path), labels=labels, category_ids=ids,
                          val_ann=val_ann, val_images=val_images,
                          trained_image_size=None if size is None else int(size),
                          val_map=None if val_map is None else float(val_map),
                          calibration=calibration, notes=tuple(notes))


def choose_weights(variants: Sequence[str], mode: str = "auto", *, cache_root: Path | None = None,
                   calibration: str = "auto") -> dict[str, VariantWeights]:
    """Weights per variant for ``--weights`` ``mode``: auto | reference | random | published | PATH.

    ``calibration`` ``auto`` means the reference run's training images when they are a usable
    folder, else ``synthetic``.
    """
    out: dict[str, VariantWeights] = {}
    cal = "synthetic" if calibration == "auto" else calibration
    for variant in variants:
        ref = reference_checkpoint(variant, cache_root)
        if mode == "random" or (mode == "auto" and ref is None):
            note = "random weights: latency only (no mAP; parity vs PyTorch is still meaningful)"
            out[variant] = VariantWeights(variant, "random", "random", calibration=cal, notes=(note,))
        elif mode in ("auto", "reference"):
            if ref is None:
                raise FileNotFoundError(f"--weights reference: no {BEST_NAME} for {variant} under "
                                        f"{(cache_root or cache_dir()) / 'reference' / variant}")
            out[variant] = _from_checkpoint(variant, ref, "reference", calibration)
        elif mode == "published":
            out[variant] = VariantWeights(variant, "published", "published", calibration=cal)
        else:
            path = Path(mode).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"--weights {mode}: no such checkpoint file")
            out[variant] = _from_checkpoint(variant, path, "checkpoint", calibration)
    return out


@dataclass
class ExportSummary:
    """What the export step did: per-artifact outcomes, request errors, total time."""

    seconds: float = 0.0
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: bool = False  # --skip-export

    def count(self, status: str) -> int:
        return sum(1 for a in self.artifacts if a["status"] == status)

    def failure(self, variant: str, backend: str, precision: str) -> str | None:
        """The error of that artifact's export in this run, if it failed."""
        for a in self.artifacts:
            if (a["variant"], a["backend"], a["precision"]) == (variant, backend, precision) and a["status"] == "failed":
                return a["error"] or "export failed"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "seconds": round(self.seconds, 2),
                "built": self.count("built"), "up_to_date": self.count("skipped"),
                "failed": self.count("failed"), "errors": list(self.errors), "artifacts": self.artifacts}

    def summary(self) -> str:
        if self.skipped:
            return "exports: skipped (--skip-export); measured what exists"
        built_s = sum(a["seconds"] for a in self.artifacts if a["status"] == "built")
        text = (f"exports: {self.count('built')} built ({built_s:.0f} s), {self.count('skipped')} up to date, "
                f"{self.count('failed')} failed; export step {self.seconds:.0f} s")
        return text + "".join(f"\n  export error: {e}" for e in self.errors)


def export_all(targets: Sequence[Target], weights: Mapping[str, VariantWeights], models_dir: Path, *,
               calibration_count: int = DEFAULT_CALIBRATION_COUNT, progress: bool = True,
               summary: ExportSummary | None = None) -> ExportSummary:
    """Build (or confirm up to date) every artifact the benchmark needs, into ``models_dir``.

    One :func:`converters.convert` call per (weights, calibration) group and per set of formats
    that make the same precisions, so each PyTorch model is built once per group. A request the
    converter refuses (:class:`converters.ConvertError`) is recorded and the rest goes on.
    Outcomes are added to ``summary`` as each call returns, so after a Ctrl-C it holds what was
    done (the converter itself leaves nothing half-made).
    """
    started = time.perf_counter()
    summary = summary if summary is not None else ExportSummary()
    try:
        _export_groups(targets, weights, models_dir, calibration_count, progress, summary)
    except KeyboardInterrupt:
        summary.errors.append("interrupted (Ctrl-C) during the export step")
        raise
    finally:
        summary.seconds = time.perf_counter() - started
    return summary


def _export_groups(targets: Sequence[Target], weights: Mapping[str, VariantWeights], models_dir: Path,
                   calibration_count: int, progress: bool, summary: ExportSummary) -> None:
    from converters import ConvertError, WeightsError, convert

    by_precisions: dict[tuple[str, ...], list[str]] = {}
    for t in targets:
        if t.export_precisions():
            by_precisions.setdefault(t.export_precisions(), []).append(t.format)
    groups: dict[tuple, list[str]] = {}
    for variant, w in weights.items():
        groups.setdefault((w.spec, w.kind, w.labels, w.calibration), []).append(variant)
    for (spec, kind, labels, calibration), variants in groups.items():
        for precisions, formats in by_precisions.items():
            log.info("exporting %s to %s at %s (%s weights)", ",".join(variants), ",".join(formats),
                     ",".join(precisions), kind)
            try:
                report = convert(variants, formats=formats, precisions=precisions, weights=spec,
                                 out_dir=models_dir, calibration=calibration,
                                 calibration_count=calibration_count, allow_random=kind == "random",
                                 labels=labels, image_size="native", progress=progress)
            except (ConvertError, WeightsError, OSError, ValueError) as exc:
                message = f"{','.join(variants)} -> {','.join(formats)}: {exc}"
                log.error("export refused: %s", message)
                summary.errors.append(message)
                for v in variants:
                    for f in formats:
                        backend = next(t.backend for t in targets if t.format == f)
                        for p in precisions:
                            summary.artifacts.append(_artifact(v, f, backend, p, "failed", error=str(exc)))
                continue
            for r in report.results:
                summary.artifacts.append(_artifact(r.variant, r.format, r.backend, r.precision, r.status,
                                                   seconds=r.seconds, export_seconds=r.export_seconds,
                                                   error=r.error, path=r.path))


def _artifact(variant: str, fmt: str, backend: str, precision: str, status: str, *, seconds: float = 0.0,
              export_seconds: float = 0.0, error: str | None = None, path: os.PathLike | None = None) -> dict:
    return {"variant": variant, "format": fmt, "backend": backend, "precision": precision, "status": status,
            "seconds": round(float(seconds), 2), "export_seconds": round(float(export_seconds), 2),
            "error": error, "path": None if path is None else str(path)}
