#!/usr/bin/env python
"""Which interpolation should the letterbox downscale use? Time, parity and mAP of OpenCV's choices.

    python benchmarks/resize.py                      # 1280x720 and 1920x1080 frames into lite0 (320), d0 (512)
    python benchmarks/resize.py --weights ~/.cache/edgedet/reference/lite0/best.pth   # + mAP, trained lite0

The runtime's letterbox (:func:`edgedet.preprocess.letterbox`) shrinks a camera frame with
:func:`edgedet.preprocess.shrink` (``area_linear`` here: ``cv2.INTER_AREA`` by a whole
factor, then ``INTER_LINEAR``). This script measures it and the alternatives on the same frames, at
the same fitted size (the letterbox's own scale and rounding), against plain ``INTER_AREA``, the
reference of quality:

* **time**: p50/p90 of the resize alone, written into a canvas view as the letterbox does, all
  methods interleaved round by round (one call of each per round) so that load from other
  processes hits them alike;
* **parity**: the model's outputs on the method's input against its outputs on the
  INTER_AREA input, on the benchmark's deterministic synthetic camera scenes
  (:func:`benchmarks.measure.bench_frames`): raw-output cosines and detection agreement (the
  detections scored against the INTER_AREA path's as ground truth: ``detection_ap50``,
  ``detection_f1``), computed by :func:`converters.verify.compare`, the converters' own parity
  figures; ``pixel_mean_abs`` is the mean absolute difference of the resized pixels;
* **mAP** (with ``--weights``, a trained checkpoint): COCO mAP on a synthetic validation set
  rendered at the frame size (:mod:`edgedet.data.synthetic`, the reference's generator) with its
  object sizes scaled by the inverse letterbox scale, so that after the downscale objects are as
  large as in the reference's training images; scored by :func:`edgedet.evaluate.run_and_score`.

A method is *acceptable* where its parity meets the accuracy-aware INT8 target of the converters
(:class:`converters.accuracy.AccuracyTarget`: as close to the INTER_AREA path as INT8 must be to
FP32) and, where measured, its mAP is within :data:`MAP_TOLERANCE` of INTER_AREA's; the
*recommendation* per (frame size, input size) is the fastest acceptable method.

Every method's input goes through the artifact's own ``Pipeline.prepare``: the method's resized
frame already has the letterbox's fitted size, so the letterbox only pads it, and whatever else
the artifact needs (normalization in numpy or in its graph) is done as the runtime does it.

Models: per ``--variants``, the artifact in ``--models`` (default: the benchmark's cache) of
``--backend``/``--precision``; with ``--weights``, the checkpoint's variant runs as PyTorch eager
with those weights (through the same ``Pipeline``) instead. Output: a printed table and
``resize.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from edgedet.cli_args import frame_size_arg  # noqa: E402
from edgedet.preprocess import Letterbox  # noqa: E402

log = logging.getLogger("benchmarks.resize")

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
#: The methods, by name. ``area`` (plain INTER_AREA) is the reference of quality; ``area_linear``
#: is the runtime's own path (:data:`RUNTIME_METHOD`).
METHODS: tuple[str, ...] = ("area", "linear", "linear_exact", "nearest", "pyrdown_linear", "area_linear")
RUNTIME_METHOD = "area_linear"
_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "linear_exact": cv2.INTER_LINEAR_EXACT,
                  "nearest": cv2.INTER_NEAREST}
#: A method's mAP may be this much below INTER_AREA's (AP, 0..1) and still count as keeping accuracy.
MAP_TOLERANCE = 0.005
#: The figures of :func:`converters.verify.compare` kept per method.
PARITY_FIGURES = ("cls_cosine", "box_cosine", "top100_agreement", "detection_ap50", "detection_f1")


def resize_into(frame: np.ndarray, dst: np.ndarray, method: str) -> np.ndarray:
    """Shrink ``frame`` into ``dst`` (an H×W×3 uint8 view, as the letterbox's canvas) with ``method``.

    ``pyrdown_linear``: ``cv2.pyrDown`` (a 5×5 Gaussian, then every second pixel) while the result
    stays at least twice the target on both sides, then ``INTER_LINEAR`` to the target.
    ``area_linear``: :func:`edgedet.preprocess.shrink` (INTER_AREA by a whole factor, its
    fast path, then INTER_LINEAR by less than 2)."""
    h, w = dst.shape[:2]
    if method == "area_linear":
        from edgedet.preprocess import shrink

        return shrink(frame, dst)
    if method == "pyrdown_linear":
        while frame.shape[1] >= 2 * w and frame.shape[0] >= 2 * h:
            frame = cv2.pyrDown(frame)
        if frame.shape[:2] == (h, w):
            dst[...] = frame
            return dst
        method = "linear"
    if method not in _INTERPOLATION:
        raise ValueError(f"unknown resize method {method!r}; choose from {', '.join(METHODS)}")
    cv2.resize(frame, (w, h), dst=dst, interpolation=_INTERPOLATION[method])
    return dst


def fitted_size(frame: np.ndarray, size: int) -> tuple[int, int, Letterbox]:
    """(width, height) the letterbox shrinks ``frame`` to for a ``size`` square (its scale and
    rounding), and the frame's :class:`~edgedet.preprocess.Letterbox` (which maps boxes back to
    it). Checked against the runtime: :data:`RUNTIME_METHOD` into that size must give the letterbox's
    pixels exactly, or this study no longer measures the runtime's path."""
    from edgedet.preprocess import letterbox

    canvas, box = letterbox(frame, size)
    if box.scale >= 1:
        raise ValueError(f"a {frame.shape[1]}x{frame.shape[0]} frame is not shrunk for {size} px; "
                         f"give frame sizes larger than the model input")
    w, h = min(size, round(box.frame_width * box.scale)), min(size, round(box.frame_height * box.scale))
    mine = resize_into(frame, np.empty((h, w, 3), np.uint8), RUNTIME_METHOD)
    if not np.array_equal(mine, canvas[:h, :w]):
        raise RuntimeError("edgedet.preprocess.letterbox no longer shrinks frames as benchmarks/resize.py "
                           f"reproduces it ({RUNTIME_METHOD} to the fitted size, top-left): update RUNTIME_METHOD")
    return w, h, box


# ------------------------------------------------------------------------------------ time


def time_methods(frames: Sequence[np.ndarray], size: int, methods: Sequence[str], *, runs: int,
                 warmup: int = 3) -> dict[str, dict[str, float]]:
    """p50/p90 (ms) of each method resizing ``frames`` (cycled) into a ``size`` canvas, interleaved."""
    from benchmarks.measure import gc_paused
    from edgedet.profiling import LatencyStats

    w, h, _ = fitted_size(frames[0], size)
    canvas = np.zeros((size, size, 3), np.uint8)
    dst = canvas[:h, :w]
    samples: dict[str, list[float]] = {m: [] for m in methods}
    for i in range(warmup):
        for m in methods:
            resize_into(frames[i % len(frames)], dst, m)
    with gc_paused():
        for i in range(runs):
            frame = frames[i % len(frames)]
            for m in methods:
                t0 = time.perf_counter()
                resize_into(frame, dst, m)
                samples[m].append((time.perf_counter() - t0) * 1000.0)
    out = {}
    for m in methods:
        stats = LatencyStats.from_samples(samples[m])
        out[m] = {"p50_ms": round(stats.p50, 4), "p90_ms": round(stats.p90, 4), "runs": stats.runs}
    return out


# ------------------------------------------------------------------------------------ models


@dataclass
class Model:
    """One model to measure parity (and mAP) with, behind the runtime's Pipeline."""

    variant: str
    description: str  # e.g. "onnxruntime-fp32 artifact (random weights)"
    pipeline: Any  # edgedet.pipeline.Pipeline
    trained: bool
    category_ids: tuple[int, ...] | None = None  # the file category of each class, where the weights say

    @property
    def size(self) -> int:
        return int(self.pipeline.manifest.input.image_size)

    def raw(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cls_logits, box_regression) of one frame, dequantized, as the pipeline prepares it."""
        from edgedet.quantization import dequantize

        batch, _ = self.pipeline.prepare([frame])
        outputs = self.pipeline.backend.run(batch)
        m = self.pipeline.manifest
        cls, box = m.output("cls_logits"), m.output("box_regression")
        return (np.asarray(dequantize(outputs[cls.name], cls.quantization), np.float32),
                np.asarray(dequantize(outputs[box.name], box.quantization), np.float32))


def artifact_model(models: Path, variant: str, backend: str, precision: str, threads: int) -> Model:
    """The artifact of ``variant`` in ``models``, loaded as :class:`edgedet.Detector` serves it, its
    pipeline at the mAP score threshold (parity uses the raw outputs and its own thresholds)."""
    from edgedet.detector import Detector
    from edgedet.evaluate import EVAL_SCORE_THRESHOLD
    from edgedet.pipeline import Pipeline

    detector = Detector(variant=variant, models=models, backend=backend, precision=precision, threads=threads,
                        profile_cache=False)
    m = detector.artifact.manifest
    pipeline = Pipeline(detector.artifact, detector.pipeline.backend, score_threshold=EVAL_SCORE_THRESHOLD)
    weights = "random weights" if m.weights.random else f"weights {m.weights.source}"
    return Model(variant, f"{m.backend}-{m.precision} artifact ({weights})", pipeline, not m.weights.random)


def checkpoint_model(path: Path, threads: int) -> Model:
    """PyTorch eager with the trained checkpoint at ``path`` (its metadata names the variant)."""
    import torch

    from converters.weights import build_model, resolve_weights
    from edgedet.evaluate import EVAL_SCORE_THRESHOLD
    from edgedet.manifest import WeightsInfo
    from edgedet.model.checkpoint import load_metadata
    from edgedet.pipeline import Pipeline

    from benchmarks.measure import torch_pipeline

    meta = load_metadata(path)
    variant = meta.get("variant")
    if not variant:
        raise ValueError(f"{path} has no edgedet training metadata naming its variant; give a checkpoint "
                         f"written by edgedet's training (e.g. <cache>/reference/lite0/best.pth)")
    torch.set_num_threads(threads)
    resolved = resolve_weights(str(path), variant, allow_random=False, progress=False)
    model = build_model(variant, resolved.num_classes or 90, resolved)
    weights = WeightsInfo(resolved.source, resolved.sha256, resolved.random)
    backend = torch_pipeline(model, weights=weights).backend
    labels = tuple(meta["class_names"]) if meta.get("class_names") else None
    pipeline = Pipeline(backend.manifest(labels=labels, weights=weights), backend, score_threshold=EVAL_SCORE_THRESHOLD)
    ids = tuple(int(i) for i in meta["category_ids"]) if meta.get("category_ids") else None
    return Model(variant, f"torch fp32 ({path})", pipeline, True, ids)


# ------------------------------------------------------------------------------------ parity and mAP


def parity(model: Model, frames: Sequence[np.ndarray], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per method: :func:`converters.verify.compare` of the model's outputs on the method's input
    against its outputs on the runtime's (INTER_AREA) input, and the resized pixels' mean abs difference."""
    from converters.verify import compare

    w, h, _ = fitted_size(frames[0], model.size)
    area = [resize_into(f, np.empty((h, w, 3), np.uint8), "area") for f in frames]
    ref = [model.raw(f) for f in frames]  # the runtime's own path, on the full frame
    out = {}
    for m in methods:
        small = [resize_into(f, np.empty((h, w, 3), np.uint8), m) for f in frames]
        got = ref if m == "area" else [model.raw(s) for s in small]
        figures = compare([c for c, _ in ref], [b for _, b in ref], [c for c, _ in got], [b for _, b in got],
                          anchors=model.pipeline.anchors)
        row = {k: figures[k] for k in PARITY_FIGURES}
        row["pixel_mean_abs"] = round(float(np.mean([np.abs(s.astype(np.int16) - a).mean()
                                                      for s, a in zip(small, area)])), 4)
        out[m] = row
    return out


def validation_set(frame_size: tuple[int, int], input_size: int, images: int, root: Path) -> tuple[Path, Path]:
    """A synthetic COCO val split rendered at ``frame_size`` whose objects, once the letterbox has
    shrunk the frame to ``input_size``, are as large as in the reference's training images
    (:class:`~edgedet.data.synthetic.SyntheticConfig` sizes scaled by the inverse letterbox scale).
    Cached under ``root``; returns (annotation file, image folder)."""
    from edgedet.data.synthetic import VAL_INDEX_OFFSET, SyntheticConfig, generate_coco

    w, h = frame_size
    factor = max(w, h) / input_size
    base = SyntheticConfig()
    config = SyntheticConfig(image_size=(w, h), min_object_size=base.min_object_size * factor)
    folder = root / f"shapes{w}x{h}-for{input_size}"
    ann = generate_coco(folder, num_images=images, config=config, split_name="val",
                        start_index=VAL_INDEX_OFFSET, progress=False)
    return ann, folder / "val"


def map_by_method(model: Model, ann: Path, images: Path, methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """COCO metrics of the model on the split, per method (boxes mapped back to the full frame by
    the full frame's letterbox)."""
    from edgedet.evaluate import load_dataset, run_and_score

    data = load_dataset(ann)
    pipe = model.pipeline
    fits: dict[tuple[int, ...], tuple[int, int, Letterbox]] = {}  # by frame shape
    out = {}
    for m in methods:
        def detect(frames: list[np.ndarray], m: str = m) -> list[Any]:
            if m == "area":
                return pipe(frames)  # the runtime's own path
            found = []
            for frame in frames:
                if frame.shape not in fits:
                    fits[frame.shape] = fitted_size(frame, model.size)
                w, h, box = fits[frame.shape]
                batch, _ = pipe.prepare([resize_into(frame, np.empty((h, w, 3), np.uint8), m)])
                found.extend(pipe.decode(pipe.backend.run(batch), [box]))
            return found

        metrics = run_and_score(detect, data, images, batch_size=1, category_ids=model.category_ids,
                                num_classes=len(pipe.manifest.labels), progress=False,
                                desc=f"resize {m}", limit=None, return_detections=False)
        out[m] = {k: round(float(v), 4) for k, v in metrics.items()}
    return out


# ------------------------------------------------------------------------------------ verdict


def recommend(timing: dict[str, dict[str, float]], parity_figures: dict[str, dict[str, float]] | None,
              maps: dict[str, dict[str, float]] | None) -> dict[str, Any]:
    """The fastest method that keeps accuracy (see the module doc), and why each other one is not chosen."""
    from converters.accuracy import AccuracyTarget

    target = AccuracyTarget()
    why: dict[str, str] = {}
    for m in timing:
        if parity_figures is not None and m in parity_figures and target.shortfall(parity_figures[m]) > 1.0:
            why[m] = (f"parity with INTER_AREA misses the accuracy-aware INT8 target (detection AP50 >= "
                      f"{target.detection_ap50}, cls cosine >= {target.cls_cosine}, box cosine >= {target.box_cosine})")
        elif maps is not None and m in maps and maps[m]["AP"] < maps["area"]["AP"] - MAP_TOLERANCE:
            why[m] = f"mAP {maps[m]['AP']:.4f} < INTER_AREA's {maps['area']['AP']:.4f} - {MAP_TOLERANCE}"
    fine = [m for m in timing if m not in why]
    best = min(fine, key=lambda m: timing[m]["p50_ms"])
    return {"method": best, "checked_on": [k for k, v in (("parity", parity_figures), ("map", maps)) if v],
            "rejected": why}


# ------------------------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/resize.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frame-sizes", default="1280x720,1920x1080", metavar="LIST",
                   help="camera frame sizes WxH (default: %(default)s)")
    p.add_argument("--variants", default="lite0,d0", metavar="LIST",
                   help="models whose input sizes to shrink to (default: %(default)s: 320 and 512)")
    p.add_argument("--methods", default=",".join(METHODS), metavar="LIST",
                   help="resize methods, area first (default: %(default)s)")
    p.add_argument("--runs", type=int, default=200, help="timed rounds per frame size and input size (default: %(default)s)")
    p.add_argument("--scenes", type=int, default=8, help="synthetic camera scenes for parity (default: %(default)s)")
    p.add_argument("--models", type=Path, metavar="DIR",
                   help="artifact directory (default: the benchmark's cache, $EDGEDET_CACHE/bench)")
    p.add_argument("--backend", default="onnxruntime", help="artifacts of this backend (default: %(default)s)")
    p.add_argument("--precision", default="fp32", help="artifacts of this precision (default: %(default)s)")
    p.add_argument("--weights", type=Path, metavar="PATH",
                   help="a trained edgedet checkpoint: its variant runs as PyTorch with it, and mAP is measured")
    p.add_argument("--map-images", type=int, default=100, metavar="N",
                   help="validation images per frame size for mAP (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: every usable core)")
    p.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: benchmarks/results/resize-<UTC>/)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(results: dict[str, Any]) -> str:
    """The printed table: per (frame size, input size) and method, time, parity and mAP."""
    lines = []
    for case in results["cases"]:
        lines.append(f"\n{case['frame_size'][0]}x{case['frame_size'][1]} -> {case['input_size']} "
                     f"({case['variant']}: {case['model'] or 'no model'})")
        lines.append(f"  {'method':<15} {'p50 ms':>7} {'p90 ms':>7} {'x area':>6} {'px diff':>7} {'cls cos':>8} "
                     f"{'det AP50':>8} {'det F1':>6} {'mAP':>6} {'AP50':>6}")
        area = case["time"]["area"]["p50_ms"] if "area" in case["time"] else None
        for m, t in case["time"].items():
            par = (case["parity"] or {}).get(m, {})
            mp = (case["map"] or {}).get(m, {})
            lines.append(f"  {m:<15} {t['p50_ms']:>7.3f} {t['p90_ms']:>7.3f} "
                         f"{_cell(area / t['p50_ms'] if area else None, '.2f'):>6} {_cell(par.get('pixel_mean_abs'), '.2f'):>7} "
                         f"{_cell(par.get('cls_cosine'), '.5f'):>8} {_cell(par.get('detection_ap50'), '.3f'):>8} "
                         f"{_cell(par.get('detection_f1'), '.3f'):>6} {_cell(mp.get('AP'), '.4f'):>6} {_cell(mp.get('AP50'), '.4f'):>6}")
        rec = case["recommendation"]
        lines.append(f"  -> fastest that keeps accuracy ({' + '.join(rec['checked_on']) or 'time only'}): {rec['method']}"
                     + "".join(f"\n     not {m}: {why}" for m, why in rec["rejected"].items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study; returns the exit status (0 done, 2 bad request)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from benchmarks.exports import default_models_dir
    from benchmarks.measure import bench_frames
    from benchmarks.run import comma_list
    from benchmarks.report import machine_info, write_json
    from edgedet.config import get_config
    from edgedet.cpu import resolve_threads
    from edgedet.hub import cache_dir

    try:
        frame_sizes = [frame_size_arg(x) for x in comma_list(args.frame_sizes)]
        methods = comma_list(args.methods)
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods or methods[0] != "area":
            raise ValueError(f"--methods must start with area and name only {', '.join(METHODS)}; got {args.methods}")
        variants = comma_list(args.variants)
        sizes = {v: get_config(v).image_size for v in variants}
        if args.runs < 1 or args.scenes < 1 or args.map_images < 0:
            raise ValueError("--runs and --scenes must be at least 1, --map-images at least 0")
        if args.weights is not None and not args.weights.is_file():
            raise ValueError(f"--weights {args.weights}: no such file")
    except (argparse.ArgumentTypeError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    threads = resolve_threads(args.threads)
    started = time.time()
    out_dir = (args.out or RESULTS_ROOT / f"resize-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}").expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)

    models: dict[str, Model | None] = {}
    notes: list[str] = []
    if args.weights is not None:
        trained = checkpoint_model(args.weights, threads)
        models[trained.variant] = trained
        if trained.variant not in variants:
            variants.append(trained.variant)
            sizes[trained.variant] = trained.size
    for v in variants:
        if v in models:
            continue
        try:
            models[v] = artifact_model((args.models or default_models_dir()).expanduser(), v, args.backend,
                                       args.precision, threads)
        except Exception as exc:  # noqa: BLE001 - time is still measured; say why parity is not
            models[v] = None
            notes.append(f"{v}: no {args.backend}-{args.precision} artifact to measure parity with ({exc})")
            log.warning("%s", notes[-1])

    cases = []
    for frame_size in frame_sizes:
        frames = bench_frames(frame_size, count=args.scenes)
        for v in variants:
            model, size = models[v], sizes[v]
            log.info("%dx%d -> %d (%s)", *frame_size, size, v)
            timing = time_methods(frames, size, methods, runs=args.runs)
            par = parity(model, frames, methods) if model is not None else None
            maps = None
            if model is not None and model.trained and args.map_images > 0:
                ann, images = validation_set(frame_size, size, args.map_images, cache_dir() / "resize")
                maps = map_by_method(model, ann, images, methods)
            cases.append({"frame_size": list(frame_size), "input_size": size, "variant": v,
                          "model": None if model is None else model.description, "time": timing,
                          "parity": par, "map": maps, "recommendation": recommend(timing, par, maps)})
    machine = machine_info(threads)
    machine["opencv_threads"] = cv2.getNumThreads()
    results = {"kind": "edgedet-resize", "created": datetime.fromtimestamp(started, timezone.utc).isoformat(),
               "seconds": round(time.time() - started, 1),
               "command": "python benchmarks/resize.py " + " ".join(shlex.quote(a) for a in argv),
               "machine": machine,
               "settings": {"frame_sizes": [list(f) for f in frame_sizes], "variants": variants, "methods": methods,
                            "runs": args.runs, "scenes": args.scenes, "backend": args.backend,
                            "precision": args.precision, "weights": None if args.weights is None else str(args.weights),
                            "map_images": args.map_images, "threads": threads, "map_tolerance": MAP_TOLERANCE},
               "cases": cases, "notes": notes}
    write_json(out_dir / "resize.json", results)
    print(format_report(results))
    for n in notes:
        print(f"note: {n}")
    print(f"\n{time.time() - started:.0f} s -> {out_dir / 'resize.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
