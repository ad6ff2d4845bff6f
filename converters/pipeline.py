"""The conversion pipeline: variants × formats × precisions → verified artifacts with manifests.

:func:`convert` checks the whole request first (names, combinations, packages, calibration,
weights), so a mistake fails in a second, not after an hour of exports. Then, per variant, it
builds the PyTorch model once, computes PyTorch FP32 outputs on held-out images once, and for
each artifact:

1. skips it if ``<out>/<variant>/<backend>-<precision>/manifest.json`` has the same export key
   and every file still matches its sha256 (unless ``force``); an artifact for another input size
   than the variant's native one (``image_sizes``) lives in ``<backend>-<precision>-<size>/``;
2. exports into a private staging directory beside the target
   (``.<backend>-<precision>.staging-<pid>-<random>``);
3. runs the files with the backend on the held-out images and compares with PyTorch
   (:mod:`converters.verify`);
4. with an evaluation set (``eval_ann`` + ``eval_images``), scores the artifact's COCO mAP through
   the runtime's own pipeline (:func:`edgedet.evaluate.evaluate_artifact`) and records it as the
   manifest's ``accuracy`` (an up-to-date artifact is scored and its manifest updated in place);
5. writes ``manifest.json`` (atomically) and publishes the directory by renaming it into place.

An interrupted or failed export therefore never leaves a model file or manifest under the final
name. An artifact that fails its parity thresholds is published as ``<backend>-<precision>.failed``
(for inspection; the runtime never looks there) and reported; the other artifacts go on, and the
report says which failed (the CLI exits non-zero).
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from converters import calibration as calib
from converters.base import INSTALL_HINT, ArtifactIO, ConvertError, Exporter, get_exporter
from converters.verify import (
    RANDOM_WEIGHT_THRESHOLDS,
    THRESHOLDS,
    Reference,
    check_parity,
    measure_parity,
    reference_outputs,
)
from converters.weights import PUBLISHED, RANDOM, ResolvedWeights, WeightsError, build_model, resolve_weights
from edgedet._progress import progress_bar
from edgedet.config import VARIANTS, check_image_size, get_config
from edgedet.hub import sha256_file
from edgedet.manifest import (
    MANIFEST_NAME,
    PRECISIONS,
    AccuracyInfo,
    AnchorSpec,
    Manifest,
    ManifestError,
    WeightsInfo,
    artifact_dir,
    export_key,
    utc_now,
)

__all__ = ["ArtifactResult", "ConvertReport", "convert", "parse_list", "parse_variants"]

logger = logging.getLogger("converters")

DEFAULT_CALIBRATION_COUNT = 100
DEFAULT_VERIFY_IMAGES = 4
#: Bump when the pipeline changes what it writes for the same inputs (part of the export key).
PIPELINE_REVISION = 2  # 2: parity gains the detection figures; INT8 is gated on them


# ------------------------------------------------------------------------------------ results


@dataclass
class ArtifactResult:
    """What happened to one artifact."""

    variant: str
    format: str
    backend: str
    precision: str
    status: str  # "built" | "skipped" | "failed"
    path: Path | None = None  # the artifact directory (or its .failed directory)
    seconds: float = 0.0  # export + verification time
    export_seconds: float = 0.0
    size_mb: float | None = None  # all files of the artifact
    parity: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    image_size: int | None = None  # the input side (None: not known, e.g. a result built by hand)
    accuracy: AccuracyInfo | None = None  # mAP measured on the evaluation set, when one was given

    @property
    def name(self) -> str:
        """``<variant>/<directory name>``, e.g. ``d0/onnxruntime-int8`` or ``d0/onnxruntime-int8-384``."""
        return f"{self.variant}/{artifact_dir('', self.variant, self.backend, self.precision, self.image_size).name}"

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass
class ConvertReport:
    """The outcome of :func:`convert`: one :class:`ArtifactResult` per requested artifact."""

    out_dir: Path
    results: list[ArtifactResult]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def by_status(self, status: str) -> list[ArtifactResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[ArtifactResult]:
        return self.by_status("failed")

    def get(self, variant: str, backend_or_format: str, precision: str,
            image_size: int | None = None) -> ArtifactResult:
        """The result of one artifact (``image_size``: of that input size; None: the first of any)."""
        for r in self.results:
            if (r.variant == variant and backend_or_format in (r.backend, r.format) and r.precision == precision
                    and image_size in (None, r.image_size)):
                return r
        raise KeyError((variant, backend_or_format, precision, image_size))

    def table(self) -> str:
        """The summary table: artifact, status, size, parity figure, (mAP,) seconds."""
        scored = any(r.accuracy is not None for r in self.results)
        rows = [("artifact", "status", "MB", "parity vs PyTorch FP32", *(("mAP",) if scored else ()), "seconds")]
        for r in self.results:
            mean_ap = (("-" if r.accuracy is None else f"{r.accuracy.map50_95:.4f}",) if scored else ())
            rows.append((r.name, r.status, "-" if r.size_mb is None else f"{r.size_mb:.1f}",
                         _parity_summary(r), *mean_ap, f"{r.seconds:.1f}" if r.status != "skipped" else "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        counts = {s: len(self.by_status(s)) for s in ("built", "skipped", "failed")}
        lines.append(f"{counts['built']} built, {counts['skipped']} up to date, {counts['failed']} failed "
                     f"in {self.seconds:.1f} s -> {self.out_dir}")
        for r in self.failed:
            lines.append(f"FAILED {r.name}: {r.error}")
        return "\n".join(lines)


def _parity_summary(r: ArtifactResult) -> str:
    p = r.parity
    if not p or "cls_cosine" not in p:
        return "-"
    def fmt(v: Any, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)
    return (f"cls max {fmt(p.get('cls_max_abs'), '.1e')} cos {fmt(p.get('cls_cosine'), '.6f')}, "
            f"box cos {fmt(p.get('box_cosine'), '.6f')}, top100 {fmt(p.get('top100_agreement'), '.2f')}")


# ------------------------------------------------------------------------------------ parsing


def parse_list(value: str | Iterable[str] | None) -> list[str]:
    """``"a,b, c"`` or ``["a", "b"]`` → ``["a", "b", "c"]`` (order kept, duplicates dropped)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return list(dict.fromkeys(item.strip().lower() for item in items if item.strip()))


def parse_variants(value: str | Iterable[str]) -> list[str]:
    """Variant names from ``"d0,lite0"``, ranges ``"d0-d3"`` / ``"lite0-lite2"``, or ``"all"``."""
    names: list[str] = []
    for item in parse_list(value):
        if item == "all":
            names.extend(VARIANTS)
            continue
        try:
            names.append(get_config(item).name)
            continue
        except ValueError:
            pass
        match = re.fullmatch(r"([a-z0-9]+)-([a-z0-9]+)", item)
        if match:
            first, last = match.groups()
            if first in VARIANTS and last in VARIANTS:
                i, j = VARIANTS.index(first), VARIANTS.index(last)
                if i <= j and get_config(first).family == get_config(last).family:
                    names.extend(VARIANTS[i:j + 1])
                    continue
                raise ConvertError(f"variant range {item!r} must run upward within one family "
                                   f"(e.g. d0-d3 or lite0-lite2)")
        raise ConvertError(f"unknown variant {item!r}; valid: {', '.join(VARIANTS)}, ranges like "
                           f"d0-d3, or 'all'")
    if not names:
        raise ConvertError("no variants given (e.g. --variants d0,lite0)")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------ planning


@dataclass
class _Job:
    variant: str
    exporter: Exporter
    precision: str
    key: str
    final: Path
    calibrated: bool
    image_size: int

    @property
    def name(self) -> str:
        return f"{self.variant}/{self.final.name}"


@dataclass(frozen=True)
class _Evaluation:
    """The evaluation set a request scores its artifacts on (checked by :func:`_open_evaluation`)."""

    ann_file: Path
    images_dir: Path
    limit: int | None
    dataset: str  # AccuracyInfo.dataset: the file's name and the start of its sha256
    images: int  # how many of its images are scored


def convert(
    variants: str | Sequence[str],
    formats: str | Sequence[str] = ("onnx",),
    precisions: str | Sequence[str] = ("fp32", "fp16", "int8"),
    weights: str = PUBLISHED,
    out_dir: str | os.PathLike[str] = "exports",
    *,
    calibration: str | os.PathLike[str] | None = None,
    calibration_count: int = DEFAULT_CALIBRATION_COUNT,
    allow_random: bool = False,
    force: bool = False,
    num_classes: int | None = None,
    labels: Sequence[str] | None = None,
    image_size: int | str | None = None,
    image_sizes: str | Sequence[int | str] | None = None,
    eval_ann: str | os.PathLike[str] | None = None,
    eval_images: str | os.PathLike[str] | None = None,
    eval_limit: int | None = None,
    seed: int = 0,
    verify_images: int = DEFAULT_VERIFY_IMAGES,
    thresholds: Mapping[str, Mapping[str, tuple[str, float]]] | None = None,
    int8_mode: str | None = None,
    input_kind: str | None = None,
    exporter_options: Mapping[str, Mapping[str, Any]] | None = None,
    exporters: Mapping[str, Exporter] | None = None,
    progress: bool = False,
    executor: str = "local",
    ray_address: str | None = None,
) -> ConvertReport:
    """Convert ``variants`` to every format × precision, verify them, write manifests.

    Args:
        variants: ``"d0,lite0"``, ``"d0-d3"``, ``"all"`` or a list of names.
        formats: registered exporter names (``"onnx"``; see :data:`converters.base.EXPORTERS`).
        precisions: any of ``fp32``, ``fp16``, ``int8``.
        weights: ``"published"`` (each variant's effdet COCO checkpoint, downloaded and cached),
            ``"random"`` (needs ``allow_random``), a checkpoint path, a URL or a registry name.
        out_dir: the export root; artifacts go to ``<out_dir>/<variant>/<backend>-<precision>/``.
        calibration: ``"synthetic"`` (``"synthetic:SEED"``), a folder of images or a video file;
            required for int8. Its held-out part is also what parity is measured on.
        calibration_count: calibration frames per int8 artifact.
        allow_random: permit random weights (recorded in each manifest).
        force: rebuild artifacts that are already up to date.
        num_classes: class count; default: the checkpoint's, or 90 for random weights.
        labels: one name per class; default: the class names an edgedet training run stored in
            the checkpoint, COCO's names for the published 90-class checkpoints, else ``class_0``...
        image_size: input side (a multiple of 32) the artifacts are made for, or ``"native"``
            (each variant's own); default: the size an edgedet training run recorded in the
            checkpoint (a model trained at 256 detects best at 256), else the native size.
        image_sizes: several input sides instead of ``image_size`` (``"384,512,native"`` or a
            list): each is its own artifact per format × precision, in
            ``<variant>/<backend>-<precision>-<size>/`` unless it is the variant's native size.
            ``Detector`` then chooses among sizes as among variants (docs/ARCHITECTURE.md).
        eval_ann, eval_images: a COCO annotation file and its images folder: each artifact's
            COCO mAP on them is measured through the runtime's pipeline and recorded in its
            manifest (``accuracy``), which ``Detector`` then ranks by instead of the published AP.
        eval_limit: score only the first N images of the evaluation set.
        seed: seed of random weights.
        verify_images: held-out images for the parity check.
        thresholds: parity thresholds per precision; default :data:`converters.verify.THRESHOLDS`,
            or :data:`~converters.verify.RANDOM_WEIGHT_THRESHOLDS` for random weights.
        int8_mode: ``"full"`` (every layer INT8) or ``"accuracy-aware"`` (the layers whose
            quantization hurts most stay float until agreement with FP32 reaches a target), for
            every format; default: ``"full"`` for random weights, else each exporter's own.
        input_kind: what the artifacts take: ``"frame"`` (the letterboxed uint8 frame canvas,
            normalized inside the graph: :mod:`converters.frame_input`) or ``"tensor"`` (the
            normalized float tensor); default: each exporter's own (frame for ONNX, OpenVINO and
            TFLite; torch artifacts take tensors only).
        exporter_options: keyword arguments for each format's exporter, e.g.
            ``{"tflite": {"input_dtype": "uint8"}}`` (see each exporter class).
        exporters: exporter instances to use instead of the registered ones, by format name.
        progress: show a tqdm progress bar over the artifacts.
        executor: ``"local"`` (this process) or ``"ray"``: each artifact a task of the Ray cluster at
            ``ray_address`` (``None``: ``$RAY_ADDRESS`` or a local cluster), each shared FP32 graph
            built once; the files come back here and are published as a local run publishes them
            (:mod:`converters.distributed`).

    Returns:
        A :class:`ConvertReport`; ``report.ok`` is false if any artifact failed.

    Raises:
        ConvertError: the request cannot be carried out (before anything is written).
    """
    started = time.perf_counter()
    _check_executor(executor, ray_address)
    plan = _plan(variants, formats, precisions, weights, out_dir, calibration=calibration,
                 calibration_count=calibration_count, allow_random=allow_random, force=force,
                 num_classes=num_classes, labels=labels, seed=seed, exporters=exporters,
                 image_size=image_size, image_sizes=image_sizes, int8_mode=int8_mode,
                 exporter_options=exporter_options, eval_ann=eval_ann, eval_images=eval_images,
                 eval_limit=eval_limit, input_kind=input_kind)
    results: list[ArtifactResult] = []
    bar = progress_bar(len(plan.jobs), unit="artifact", enabled=progress)
    try:
        for variant in plan.variants:
            for size in plan.image_sizes[variant]:  # one PyTorch model (and reference) per size
                jobs = [j for j in plan.jobs if j.variant == variant and j.image_size == size]
                _run_variant(variant, size, jobs, plan, results, bar, force=force, verify_images=verify_images,
                             thresholds=thresholds, executor=executor, ray_address=ray_address)
    finally:
        bar.close()
        for exporter in plan.exporters:
            exporter.release()
    report = ConvertReport(out_dir=plan.out_dir, results=results, seconds=time.perf_counter() - started)
    return report


@dataclass
class _Plan:
    variants: list[str]
    exporters: list[Exporter]
    jobs: list[_Job]
    weights: dict[str, ResolvedWeights]
    num_classes: dict[str, int]
    labels: dict[str, tuple[str, ...]]
    image_sizes: dict[str, list[int]]
    calibration: calib.Calibration | None
    holdout: calib.CalibrationSource
    out_dir: Path
    evaluation: _Evaluation | None = None


INT8_MODES = ("full", "accuracy-aware")


def _plan(variants, formats, precisions, weights, out_dir, *, calibration, calibration_count,
          allow_random, force, num_classes, labels, seed, exporters, image_size=None, int8_mode=None,
          exporter_options=None, image_sizes=None, eval_ann=None, eval_images=None, eval_limit=None,
          input_kind=None) -> _Plan:
    """Check the whole request and list its jobs, before anything is exported (see :func:`convert`).

    The checks run in this order, so the first mistake of a request is the one reported. ``force``
    does not change the plan (it is :func:`convert`'s; accepted for symmetry with it).
    """
    names = parse_variants(variants)
    format_names, precision_names = _parse_formats(formats), _parse_precisions(precisions)
    int8_mode = _int8_mode(int8_mode, weights)
    asked_sizes = _parse_image_sizes(image_size, image_sizes)
    instances = _make_exporters(format_names, precision_names, int8_mode, exporter_options, exporters, input_kind)
    _check_packages(instances, format_names)
    calibration_set, holdout = _open_calibration(calibration, calibration_count, instances, precision_names)
    evaluation = _open_evaluation(eval_ann, eval_images, eval_limit)
    resolved, classes = _resolve_all_weights(weights, names, num_classes, allow_random=allow_random, seed=seed)
    sizes, label_sets = {}, {}
    for variant in names:
        sizes[variant] = list(dict.fromkeys(_image_size(variant, size, resolved[variant]) for size in asked_sizes))
        label_sets[variant] = _labels(variant, labels, classes[variant], resolved[variant])
        if evaluation is not None:
            _check_evaluation_classes(variant, classes[variant], label_sets[variant], evaluation)
    root = _output_root(out_dir)
    jobs = [_job(variant, exporter, precision, root, size, classes[variant], label_sets[variant],
                 resolved[variant], calibration_set)
            for variant in names for size in sizes[variant] for exporter in instances
            for precision in exporter.precisions  # build order: fp32 first (its graph is reused)
            if precision in precision_names]
    return _Plan(names, instances, jobs, resolved, classes, label_sets, sizes, calibration_set, holdout, root,
                 evaluation)


def _parse_formats(formats: str | Sequence[str]) -> list[str]:
    names = parse_list(formats)
    if not names:
        raise ConvertError("no formats given (e.g. --formats onnx)")
    return names


def _parse_precisions(precisions: str | Sequence[str]) -> list[str]:
    names = parse_list(precisions)
    if not names:
        raise ConvertError("no precisions given (e.g. --precisions fp32,int8)")
    unknown = [p for p in names if p not in PRECISIONS]
    if unknown:
        raise ConvertError(f"unknown precision {unknown[0]!r}; valid: {', '.join(PRECISIONS)}")
    return names


def _int8_mode(int8_mode: str | None, weights: str) -> str | None:
    """The INT8 mode asked for, checked; ``"full"`` by default for random weights."""
    if int8_mode is not None and int8_mode not in INT8_MODES:
        raise ConvertError(f"unknown int8 mode {int8_mode!r}; valid: {', '.join(INT8_MODES)}")
    if int8_mode is None and weights == RANDOM:
        # An accuracy search on random weights would chase the agreement of a network that detects
        # nothing; the float layers it keeps would only distort the latency these artifacts are for
        # (and the search took 100 s of D1's 106 s ONNX INT8 export).
        return "full"
    return int8_mode


def _parse_image_sizes(image_size: int | str | None,
                       image_sizes: str | Sequence[int | str] | None) -> list[int | str | None]:
    """The input sizes asked for (ints, ``"native"``, or ``[None]``: the default), each checked."""
    if image_size is not None and image_sizes is not None:
        raise ConvertError("give image_size (one size) or image_sizes (several), not both "
                           "(--image-size or --image-sizes)")
    if image_sizes is None:
        asked: list[int | str | None] = [image_size]
    else:
        items = image_sizes.split(",") if isinstance(image_sizes, str) else list(image_sizes)
        asked = []
        for item in items:
            text = str(item).strip().lower()
            if not text:
                continue
            if text == "native":
                asked.append("native")
                continue
            try:
                asked.append(int(text) if isinstance(item, str) else item)
            except ValueError:
                raise ConvertError(f"image size must be a number of pixels or 'native', got {item!r}") from None
        if not asked:
            raise ConvertError("no image sizes given (e.g. --image-sizes 384,512,native)")
    for size in asked:
        if size is not None and size != "native":
            try:
                check_image_size(size)
            except ValueError as exc:
                raise ConvertError(f"{exc}, or 'native'") from None
    return list(dict.fromkeys(asked))


def _make_exporters(format_names: list[str], precision_names: list[str], int8_mode: str | None,
                    exporter_options: Mapping[str, Mapping[str, Any]] | None,
                    exporters: Mapping[str, Exporter] | None, input_kind: str | None = None) -> list[Exporter]:
    """One exporter per format (a given instance, else the registered class with its options),
    each checked to make every requested precision."""
    stray = sorted(set(exporter_options or {}) - set(format_names))
    if stray:
        raise ConvertError(f"options given for {', '.join(stray)}, which is not among --formats "
                           f"({', '.join(format_names)})")
    instances: list[Exporter] = []
    for name in format_names:
        exporter = (exporters or {}).get(name)
        if exporter is None:
            exporter = _new_exporter(name, dict((exporter_options or {}).get(name, {})), int8_mode, input_kind)
        instances.append(exporter)
        unsupported = [p for p in precision_names if p not in exporter.precisions]
        if unsupported:
            raise ConvertError(f"format {name} does not make {', '.join(unsupported)} "
                               f"(it makes {', '.join(exporter.precisions)}); drop it from --precisions "
                               f"or convert that format separately")
    return instances


def _new_exporter(name: str, kwargs: dict[str, Any], int8_mode: str | None, input_kind: str | None = None) -> Exporter:
    cls = get_exporter(name)
    if int8_mode is not None and "int8" in cls.precisions:
        kwargs.setdefault("accuracy_aware", int8_mode == "accuracy-aware")
    if input_kind is not None:
        if input_kind not in ("frame", "tensor"):
            raise ConvertError(f"unknown input {input_kind!r}; choose frame (the uint8 frame canvas, "
                               "preprocessed inside the model) or tensor (the normalized float tensor)")
        if input_kind not in cls.input_kinds:
            raise ConvertError(f"format {name} makes {' or '.join(cls.input_kinds)}-input artifacts, not "
                               f"{input_kind}; drop --input or convert that format separately")
        if len(cls.input_kinds) > 1:
            kwargs.setdefault("input_kind", input_kind)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConvertError(f"bad options for format {name}: {exc}") from None
    except ValueError as exc:
        raise ConvertError(f"{name}: {exc}") from None


def _check_packages(instances: list[Exporter], format_names: list[str]) -> None:
    missing = sorted({dist for e in instances for dist in e.missing_packages()}
                     | ({"torch"} if _missing("torch") else set()))
    if missing:
        raise ConvertError(f"missing packages for {', '.join(format_names)}: {', '.join(missing)}; "
                           f"install the converter dependencies with: {INSTALL_HINT}")


def _open_calibration(calibration: str | os.PathLike[str] | None, count: int, instances: list[Exporter],
                      precision_names: list[str]) -> tuple[calib.Calibration | None, calib.CalibrationSource]:
    """The calibration set (None if no source was given) and the source of held-out frames for
    the parity check (the calibration source's, else synthetic scenes)."""
    needs_calibration = any(p in e.calibrated_precisions for e in instances for p in precision_names)
    if count < 1:
        raise ConvertError(f"calibration_count must be at least 1, got {count}")
    if calibration is None:
        if needs_calibration:
            raise ConvertError("int8 needs calibration images: pass --calibration DIR (a folder of "
                               "images like those the model will see), --calibration VIDEO, or "
                               "--calibration synthetic (built-in scenes; fine for random weights and "
                               "latency tests, not for accuracy), or drop int8 from --precisions")
        return None, calib.SyntheticSource(0)
    try:
        source = calib.open_calibration_source(calibration)
    except calib.CalibrationError as exc:
        raise ConvertError(str(exc)) from None
    return calib.Calibration(source, count), source


def _resolve_all_weights(weights: str, names: list[str], num_classes: int | None, *, allow_random: bool,
                         seed: int) -> tuple[dict[str, ResolvedWeights], dict[str, int]]:
    """Each variant's weights and class count, checked to fit the variant."""
    if not weights:
        raise ConvertError("no weights given: pass published, random, a checkpoint path, URL or name")
    resolved: dict[str, ResolvedWeights] = {}
    classes: dict[str, int] = {}
    for variant in names:
        try:
            w = resolve_weights(weights, variant, allow_random=allow_random, seed=seed)
        except WeightsError as exc:
            raise ConvertError(str(exc)) from None
        if w.num_classes is not None and num_classes is not None and w.num_classes != num_classes:
            raise ConvertError(f"weights {weights!r} have {w.num_classes} classes but num_classes="
                               f"{num_classes} was asked for {variant}; drop --num-classes or use "
                               f"a checkpoint trained for {num_classes} classes")
        n = num_classes or w.num_classes or 90
        if not w.random:
            _check_fit(variant, n, w)
        resolved[variant], classes[variant] = w, n
    return resolved, classes


def _image_size(variant: str, image_size: int | str | None, weights: ResolvedWeights) -> int:
    """The input side of one of ``variant``'s artifacts: asked for, else the size the checkpoint was
    trained at, else the variant's own."""
    native = get_config(variant).image_size
    size = native if image_size == "native" else image_size or weights.trained_image_size or native
    try:
        return check_image_size(size)
    except ValueError as exc:
        raise ConvertError(f"{variant}: the checkpoint was trained at {size} px: {exc}; "
                           f"pass --image-size") from None


def _labels(variant: str, labels: Sequence[str] | None, num_classes: int,
            weights: ResolvedWeights) -> tuple[str, ...]:
    """The class names: given, else the checkpoint's (if there is one per class), else ``class_N``."""
    if labels is None:
        in_checkpoint = weights.class_names
        if in_checkpoint and len(in_checkpoint) == num_classes:
            return in_checkpoint
        return tuple(f"class_{i}" for i in range(num_classes))
    if len(labels) != num_classes:
        raise ConvertError(f"{len(labels)} labels given but {variant} has {num_classes} classes")
    return tuple(str(x) for x in labels)


def _output_root(out_dir: str | os.PathLike[str]) -> Path:
    root = Path(out_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise ConvertError(f"output {root} exists and is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConvertError(f"cannot create output directory {root}: {exc}") from None
    return root


def _job(variant: str, exporter: Exporter, precision: str, root: Path, image_size: int, num_classes: int,
         labels: tuple[str, ...], weights: ResolvedWeights, calibration: calib.Calibration | None) -> _Job:
    """One artifact to build, with the export key that says when it is up to date."""
    calibrated = precision in exporter.calibrated_precisions
    key = export_key(
        pipeline=PIPELINE_REVISION,
        exporter=f"{type(exporter).__module__}.{type(exporter).__qualname__}:r{exporter.revision}",
        variant=variant, image_size=image_size, num_classes=num_classes, labels=labels, weights=weights.key,
        backend=exporter.backend, precision=precision,
        calibration=calibration.key if calibrated and calibration else None,
        tools=exporter.tool_versions(), options=exporter.options(precision),
    )
    return _Job(variant, exporter, precision, key,
                artifact_dir(root, variant, exporter.backend, precision, image_size), calibrated, image_size)


def _check_executor(executor: str, ray_address: str | None) -> None:
    """A known executor, and for Ray an installed package and a reachable cluster (before any work)."""
    from edgedet.cluster import EXECUTORS, ExecutorError, connect

    if executor not in EXECUTORS:
        raise ConvertError(f"unknown executor {executor!r}; choose {' or '.join(EXECUTORS)}")
    if executor == "ray":
        try:
            connect(ray_address)
        except ExecutorError as exc:
            raise ConvertError(str(exc)) from None


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def _check_fit(variant: str, num_classes: int, weights: ResolvedWeights) -> None:
    """Compare the checkpoint's keys and shapes with the variant's, on a weightless (meta) model."""
    import torch

    from edgedet.model.checkpoint import load_state_dict
    from edgedet.model.efficientdet import EfficientDet

    state = load_state_dict(weights.path)
    with torch.device("meta"):
        target = EfficientDet(get_config(variant).with_(num_classes=num_classes)).state_dict()
    def relevant(key: str) -> bool:
        return not key.endswith("num_batches_tracked")
    missing = [k for k in target if relevant(k) and k not in state]
    mismatched = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    unexpected = [k for k in state if relevant(k) and k not in target]
    if missing or mismatched or unexpected:
        detail = "; ".join(f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                           (("missing", missing), ("with other shapes", mismatched),
                            ("unexpected", unexpected)) if v)
        raise ConvertError(f"weights {weights.source} do not fit {variant}: {detail}. A checkpoint "
                           f"fits one variant: pass the matching --variants, or --weights published")


# ------------------------------------------------------------------------------------ running


def _run_variant(variant: str, image_size: int, jobs: list[_Job], plan: _Plan, results: list[ArtifactResult],
                 bar: Any, *, force: bool, verify_images: int, thresholds, executor: str = "local",
                 ray_address: str | None = None) -> None:
    """Build ``jobs``: the artifacts of ``variant`` at one input size (one PyTorch model)."""
    todo = []
    for job in jobs:
        skipped = None if force else _up_to_date(job)
        if skipped is not None:
            logger.info("%s: up to date, skipped", job.name)
            if plan.evaluation is not None:
                try:
                    skipped.accuracy = _score_in_place(job, plan.evaluation)
                except Exception as exc:  # noqa: BLE001 - reported per artifact, the others go on
                    skipped.status, skipped.error = "failed", f"evaluation failed: {type(exc).__name__}: {exc}"
                    logger.error("%s: %s", job.name, skipped.error)
            results.append(skipped)
            bar.update(1)
        else:
            todo.append(job)
    if not todo:
        return
    _clean_stale(plan.out_dir / variant)

    model = reference = None
    setup_error: str | None = None
    try:
        bar.set_description(f"{variant}: building model")
        logger.info("%s: building the PyTorch model (%s weights)", variant,
                    "random" if plan.weights[variant].random else plan.weights[variant].source)
        model = build_model(variant, plan.num_classes[variant], plan.weights[variant], image_size=image_size)
        reference = reference_outputs(
            model, plan.holdout.holdout_frames(verify_images),
            description=plan.holdout.holdout_description)
    except Exception as exc:  # noqa: BLE001 - reported per artifact, other variants go on
        setup_error = f"building {variant} at {image_size} px failed: {type(exc).__name__}: {exc}"
        logger.error("%s", setup_error)

    if setup_error is None and executor == "ray":
        from converters.distributed import build_on_ray

        results.extend(build_on_ray(todo, model, reference, plan, thresholds, ray_address, bar))
    else:
        for job in todo:
            bar.set_description(job.name)
            if setup_error is not None:
                results.append(_failed(job, setup_error, 0.0))
            else:
                results.append(_build(job, model, reference, plan, thresholds))
            bar.update(1)
    for exporter in {id(j.exporter): j.exporter for j in todo}.values():
        exporter.release()


def _up_to_date(job: _Job) -> ArtifactResult | None:
    if not (job.final / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = Manifest.load(job.final)
    except ManifestError as exc:
        logger.info("%s: rebuilding, existing manifest unreadable (%s)", job.name, exc)
        return None
    if manifest.export_key != job.key:
        logger.info("%s: rebuilding, inputs changed since it was built", job.name)
        return None
    if not manifest.files_match(job.final):
        logger.warning("%s: rebuilding, its files do not match the manifest", job.name)
        return None
    return ArtifactResult(job.variant, job.exporter.name, job.exporter.backend, job.precision, "skipped",
                          path=job.final, size_mb=_size_mb(manifest.file_paths(job.final)),
                          parity=dict(manifest.parity), image_size=job.image_size, accuracy=manifest.accuracy)


@dataclass
class _Made:
    """What exporting and verifying one artifact produced, before it is published."""

    files: list[Path]
    io: ArtifactIO
    parity: dict[str, Any]
    failures: list[str]
    export_seconds: float


def _make(exporter: Exporter, precision: str, model: Any, reference: Reference,
          calibration: calib.Calibration | None, staging: Path, thresholds) -> _Made:
    """Export ``precision`` into ``staging`` and measure its parity with PyTorch: the part of a build
    that runs wherever the executor puts it (this process, or a Ray worker)."""
    started = time.perf_counter()
    files = [Path(f) for f in exporter.export(model, model.config, staging, precision, calibration)]
    export_seconds = time.perf_counter() - started
    for f in files:
        if f.parent.resolve() != staging.resolve() and staging.resolve() not in f.resolve().parents:
            raise ConvertError(f"exporter {exporter.name} wrote {f} outside its directory")
    _remove_extras(staging, files)
    io = exporter.describe(files, model.config, precision)
    parity = measure_parity(reference, exporter.runner(files, io), io.input)
    failures = check_parity(parity, precision, thresholds)
    parity["passed"] = not failures
    if failures:
        parity["failed_checks"] = "; ".join(failures)
    return _Made(files, io, parity, failures, export_seconds)


def _staging(job: _Job) -> Path:
    staging = job.final.parent / f".{job.final.name}.staging-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir(parents=True)
    return staging


def _build(job: _Job, model: Any, reference: Reference, plan: _Plan, thresholds) -> ArtifactResult:
    started = time.perf_counter()
    staging = _staging(job)
    try:
        logger.info("%s: exporting", job.name)
        made = _make(job.exporter, job.precision, model, reference, plan.calibration if job.calibrated else None,
                     staging, _thresholds(thresholds, plan.weights[job.variant]))
        return _publish_made(job, made, staging, plan, model.config, started)
    except Exception as exc:  # noqa: BLE001 - collected; the other artifacts go on
        logger.error("%s: failed: %s: %s", job.name, type(exc).__name__, exc)
        logger.debug("%s: traceback", job.name, exc_info=True)
        return _failed(job, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
    finally:
        # Also on KeyboardInterrupt: nothing half-made survives under any name.
        shutil.rmtree(staging, ignore_errors=True)


def _options_with_note(exporter: Exporter, config: Any, precision: str) -> dict[str, str]:
    """The exporter's options for the manifest, with its note on this artifact if it has one."""
    note = exporter.note(config, precision)
    return {**exporter.options(precision), **({"note": note} if note else {})}


def _publish_made(job: _Job, made: _Made, staging: Path, plan: _Plan, config: Any, started: float) -> ArtifactResult:
    """Write the manifest of ``made`` beside its files in ``staging``, check that it reads back and
    verifies, and publish the directory atomically (as ``*.failed`` if parity failed)."""
    exporter, weights = job.exporter, plan.weights[job.variant]
    manifest = Manifest(
        variant=job.variant, family=config.family, phi=config.phi,
        num_classes=plan.num_classes[job.variant], labels=plan.labels[job.variant],
        input=made.io.input, outputs=made.io.outputs, anchors=AnchorSpec.from_config(config),
        backend=exporter.backend, precision=job.precision,
        files={f.resolve().relative_to(staging.resolve()).as_posix(): sha256_file(f) for f in made.files},
        weights=WeightsInfo(source=weights.source, sha256=weights.sha256, random=weights.random),
        calibration=plan.calibration.info if job.calibrated and plan.calibration else None,
        float_layers=made.io.float_layers, parity=made.parity,
        tools=exporter.tool_versions(), options=_options_with_note(exporter, config, job.precision),
        created=utc_now(), export_key=job.key,
    )
    manifest.save(staging)
    if plan.evaluation is not None and not made.failures:
        manifest = replace(manifest, accuracy=_score(staging, manifest, plan.evaluation))
        manifest.save(staging)
    Manifest.load(staging).verify_files(staging)  # what is published must read back and verify
    size = _size_mb(made.files)
    seconds = time.perf_counter() - started
    if made.failures:
        target = job.final.with_name(job.final.name + ".failed")
        _publish(staging, target)
        message = f"parity below thresholds: {'; '.join(made.failures)} (artifact kept in {target})"
        logger.error("%s: %s", job.name, message)
        return ArtifactResult(job.variant, exporter.name, exporter.backend, job.precision, "failed",
                              path=target, seconds=seconds, export_seconds=made.export_seconds, size_mb=size,
                              parity=made.parity, error=message, image_size=job.image_size)
    _publish(staging, job.final)
    logger.info("%s: built in %.1f s", job.name, seconds)
    return ArtifactResult(job.variant, exporter.name, exporter.backend, job.precision, "built",
                          path=job.final, seconds=seconds, export_seconds=made.export_seconds, size_mb=size,
                          parity=made.parity, image_size=job.image_size, accuracy=manifest.accuracy)


def _thresholds(overrides, weights: ResolvedWeights) -> Mapping[str, Mapping[str, tuple[str, float]]]:
    if overrides is not None:
        return overrides
    # Random networks are more sensitive to quantization than trained ones (converters.weights).
    return RANDOM_WEIGHT_THRESHOLDS if weights.random else THRESHOLDS


def _failed(job: _Job, message: str, seconds: float) -> ArtifactResult:
    return ArtifactResult(job.variant, job.exporter.name, job.exporter.backend, job.precision, "failed",
                          path=None, seconds=seconds, error=message, image_size=job.image_size)


# ------------------------------------------------------------------------------------ evaluation


def _open_evaluation(ann_file: str | os.PathLike[str] | None, images_dir: str | os.PathLike[str] | None,
                     limit: int | None) -> _Evaluation | None:
    """The evaluation set, checked before any work (None when none was given)."""
    from edgedet.evaluate import load_dataset

    if ann_file is None and images_dir is None:
        if limit is not None:
            raise ConvertError("eval_limit needs an evaluation set (--eval-ann and --eval-images)")
        return None
    if ann_file is None or images_dir is None:
        raise ConvertError("an evaluation set is a COCO annotation file and its images: give both "
                           "--eval-ann FILE and --eval-images DIR, or neither")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConvertError(f"eval_limit must be a positive number of images, got {limit!r}")
    if _missing("faster_coco_eval") and _missing("pycocotools"):
        raise ConvertError("scoring mAP needs faster-coco-eval or pycocotools: pip install 'edgedet[eval]'")
    ann, images = Path(ann_file).expanduser(), Path(images_dir).expanduser()
    try:
        data = load_dataset(ann)
    except (FileNotFoundError, ValueError) as exc:
        raise ConvertError(f"--eval-ann: {exc}") from None
    if not data.get("annotations"):
        raise ConvertError(f"--eval-ann {ann} has no annotations: mAP would be undefined")
    if not images.is_dir():
        raise ConvertError(f"--eval-images {images} is not a directory (the folder of the annotation file's images)")
    count = len(data["images"]) if limit is None else min(limit, len(data["images"]))
    return _Evaluation(ann, images, limit, f"{ann.name}#{sha256_file(ann)[:12]}", count)


def _check_evaluation_classes(variant: str, num_classes: int, labels: tuple[str, ...], evaluation: _Evaluation) -> None:
    """The model's classes must map to the evaluation file's categories (as the scoring will map them)."""
    from edgedet.evaluate import category_mapping, load_dataset

    try:
        category_mapping(num_classes, load_dataset(evaluation.ann_file)["categories"], labels=labels)
    except ValueError as exc:
        raise ConvertError(f"{variant} cannot be scored on {evaluation.ann_file}: {exc}") from None


def _score(directory: Path, manifest: Manifest, evaluation: _Evaluation) -> AccuracyInfo:
    """COCO mAP of the artifact in ``directory``, run as ``Detector`` runs it."""
    from edgedet.evaluate import evaluate_artifact

    logger.info("%s: scoring mAP on %d images of %s", manifest.artifact_name, evaluation.images, evaluation.dataset)
    metrics = evaluate_artifact(directory, evaluation.ann_file, evaluation.images_dir, variant=manifest.variant,
                                backend=manifest.backend, precision=manifest.precision, limit=evaluation.limit)
    return AccuracyInfo(map50_95=max(0.0, metrics["AP"]), map50=max(0.0, metrics["AP50"]),
                        dataset=evaluation.dataset, images=evaluation.images)


def _score_in_place(job: _Job, evaluation: _Evaluation) -> AccuracyInfo:
    """Score an up-to-date artifact unless its manifest already holds this set's figures, and
    rewrite its manifest (atomically) with them."""
    manifest = Manifest.load(job.final)
    known = manifest.accuracy
    if known is not None and (known.dataset, known.images) == (evaluation.dataset, evaluation.images):
        return known
    accuracy = _score(job.final, manifest, evaluation)
    replace(manifest, accuracy=accuracy).save(job.final)
    return accuracy


def _remove_extras(staging: Path, files: list[Path]) -> None:
    keep = {f.resolve() for f in files}
    for path in staging.rglob("*"):
        if path.is_file() and path.resolve() not in keep:
            path.unlink()


def _publish(staging: Path, final: Path) -> None:
    """Move the finished ``staging`` directory to ``final`` (replacing an older one) by renames."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _clean_stale(variant_dir: Path) -> None:
    """Remove staging/old directories left by runs that were killed (whose process is gone)."""
    if not variant_dir.is_dir():
        return
    for path in variant_dir.iterdir():
        match = re.fullmatch(r"\..+\.(?:staging|old)-(\d+)-[0-9a-f]+", path.name)
        if match and path.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _size_mb(paths: Iterable[Path]) -> float:
    return sum(p.stat().st_size for p in paths if p.is_file()) / 1e6


