#!/usr/bin/env python
"""The main job: the latency/accuracy table of every φ × backend × precision on this machine.

    python benchmarks/run.py --device cpu

builds (or reuses) the artifacts it needs through ``converters.convert``, measures each one's
model-only and end-to-end latency with fixed thread counts (and where the end-to-end time goes:
preprocess, inference, decode + NMS), checks the performance targets, adds the PyTorch eager reference,
parity, mAP (trained reference weights only), the machine's GEMM peak and the BiFPN fusion
ablation, prints the table and writes ``results.json``, ``results.csv`` and PNG plots to
``--out``. Method and JSON schema: ``benchmarks/README.md``.

Exit status: 0 done (failed rows are in the table), 1 nothing could be measured, 2 bad request,
130 interrupted (Ctrl-C: the rows measured so far are written first).
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.exports import DEFAULT_CALIBRATION_COUNT  # noqa: E402
from edgedet.cli_args import frame_size_arg  # noqa: E402

log = logging.getLogger("benchmarks")

DEFAULT_VARIANTS = "lite0,lite1,d0,d1"
DEFAULT_ABLATION = "d0,lite0"
RESULTS_ROOT = Path(__file__).resolve().parent / "results"

EPILOG = """\
examples:
  python benchmarks/run.py --device cpu                          # the default table (builds what it needs)
  python benchmarks/run.py --device cpu --variants lite0 --backends onnx --runs 5
  python benchmarks/run.py --device cpu --models exports/ --skip-export   # measure what exists
  python benchmarks/run.py --device gpu --backends openvino      # OpenVINO's GPU plug-in
  python benchmarks/run.py --device cpu --weights published --coco-ann val2017.json --coco-images val2017/

devices: cpu (onnxruntime CPU EP, OpenVINO CPU, TFLite/XNNPACK); gpu, npu, auto (OpenVINO only);
cuda, tensorrt (onnxruntime only). Rows a runtime cannot run on the device are listed as
'unavailable' with the reason.
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def comma_list(text: str) -> list[str]:
    """``"a, B,,c"`` -> ``["a", "b", "c"]``: a command line's comma-separated list, lower case."""
    return [x.strip().lower() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0],
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to measure")
    what.add_argument("--device", default="cpu", choices=("cpu", "gpu", "npu", "auto", "cuda", "tensorrt"),
                      help="target device (default: cpu)")
    what.add_argument("--variants", default=DEFAULT_VARIANTS, metavar="LIST",
                      help="variants or ranges, e.g. lite0,d0-d2 (default: %(default)s)")
    what.add_argument("--backends", type=comma_list, metavar="LIST",
                      help="formats: onnx, openvino, tflite (default: every registered exporter whose "
                           "packages are installed)")
    what.add_argument("--precisions", type=comma_list, default=["fp32", "fp16", "int8"], metavar="LIST",
                      help="fp32, fp16, int8 (default: all)")
    how = p.add_argument_group("how to measure")
    how.add_argument("--threads", type=_positive, default=os.cpu_count() or 1,
                     help="inference threads for every runtime and torch (default: os.cpu_count() = %(default)s)")
    how.add_argument("--runs", type=_positive, default=30, help="timed calls per latency (default: %(default)s)")
    how.add_argument("--warmup", type=int, default=5, help="untimed calls first (default: %(default)s)")
    how.add_argument("--max-row-seconds", type=float, default=60.0, metavar="S",
                     help="stop a timed loop after S seconds (at least 3 runs; default: %(default)s)")
    how.add_argument("--frame-size", type=frame_size_arg, default=(1280, 720), metavar="WxH",
                     help="camera frame size for end-to-end latency (default: 1280x720)")
    src = p.add_argument_group("models")
    src.add_argument("--models", type=Path, metavar="DIR",
                     help="artifact directory to use and extend (default: $EDGEDET_CACHE/bench or "
                          "~/.cache/edgedet/bench)")
    src.add_argument("--skip-export", action="store_true", help="export nothing; measure what exists in --models")
    src.add_argument("--weights", default="auto", metavar="SOURCE",
                     help="auto (default: <cache>/reference/<variant>/best.pth where it exists, else realistic "
                          "random weights, latency only), reference, random, published, or a checkpoint path")
    src.add_argument("--calibration", default="auto", metavar="SOURCE",
                     help="INT8 calibration: auto (the reference run's training images if usable, else "
                          "synthetic), synthetic, a folder of images or a video")
    src.add_argument("--calibration-count", type=_positive, default=DEFAULT_CALIBRATION_COUNT, metavar="N",
                     help="calibration frames per INT8 artifact (default: %(default)s)")
    acc = p.add_argument_group("accuracy")
    acc.add_argument("--coco-ann", type=Path, metavar="JSON", help="COCO annotations to compute mAP on")
    acc.add_argument("--coco-images", type=Path, metavar="DIR", help="the images of --coco-ann")
    acc.add_argument("--map-limit", type=int, default=100, metavar="N",
                     help="score the first N images (default: %(default)s; 0 = all)")
    acc.add_argument("--no-map", action="store_true", help="no mAP at all")
    ctx = p.add_argument_group("context")
    ctx.add_argument("--ablation-variants", default=DEFAULT_ABLATION, metavar="LIST",
                     help="variants for the BiFPN fusion ablation (default: %(default)s; 'none' skips it)")
    ctx.add_argument("--ablation-runs", type=_positive, default=10, metavar="N",
                     help="timed rounds of the fusion ablation (default: %(default)s)")
    ctx.add_argument("--ablation-threads", type=_positive, default=1, metavar="N",
                     help="torch threads of the fusion ablation (default: %(default)s: it compares small "
                          "operators, and one thread is immune to the barrier stalls other processes cause)")
    ctx.add_argument("--gemm-sizes", default="1024,2048", metavar="LIST",
                     help="square MatMul sizes for the measured FP32 and INT8 peaks, probed with every kernel "
                          "the runtimes offer, plus memory bandwidth (default: %(default)s; 'none' skips them)")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, metavar="DIR",
                     help="results directory (default: benchmarks/results/<UTC timestamp>/)")
    out.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    out.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    out.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    return p


def _none_or_list(text: str) -> list[str]:
    items = comma_list(text)
    return [] if items in ([], ["none"]) else items


def _utc(ts: float | None = None) -> datetime:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), tz=timezone.utc)


def _settings(args: argparse.Namespace, variants: list[str], targets: list, models_dir: Path,
              weights: dict, eval_set: Any) -> dict[str, Any]:
    return {
        "device": args.device, "variants": variants, "backends": [t.format for t in targets],
        "precisions": list(args.precisions), "threads": args.threads, "runs": args.runs, "warmup": args.warmup,
        "max_row_seconds": args.max_row_seconds, "frame_size": list(args.frame_size),
        "models_dir": str(models_dir), "skip_export": bool(args.skip_export), "weights_mode": args.weights,
        "weights": {v: w.describe() for v, w in weights.items()},
        "calibration_count": args.calibration_count,
        "map": None if args.no_map else {"limit": args.map_limit or None,
                                          "eval_set": None if eval_set is None else eval_set.describe()},
        "ablation_variants": _none_or_list(args.ablation_variants), "ablation_runs": args.ablation_runs,
        "ablation_threads": args.ablation_threads,
        "gemm_sizes": [int(x) for x in _none_or_list(args.gemm_sizes)],
        "targets": {t.format: {"backend": t.backend, "device": t.device, "reason": t.reason,
                               "export_reason": t.export_reason, "makes": None if t.makes is None else list(t.makes)}
                    for t in targets},
    }


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:  # the detector announces every artifact it loads: one line per row is enough
        logging.getLogger("edgedet.detector").setLevel(max(level, logging.WARNING))


def _redirect_logging(progress: bool) -> Any:
    if not progress:
        return nullcontext()
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:
        return nullcontext()
    return logging_redirect_tqdm()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (see the module doc)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _setup_logging(args)

    from converters import ConvertError, parse_variants

    from benchmarks import accuracy, context, exports, limits, matrix, plots, report
    from benchmarks.results import Matrix
    from benchmarks.schema import SCHEMA_VERSION
    from benchmarks.targets import TargetError, check_targets, resolve_formats
    from edgedet.manifest import PRECISIONS

    started = time.time()
    progress = not args.no_progress
    try:
        variants = parse_variants(",".join(comma_list(args.variants)))
        bad = [p for p in args.precisions if p not in PRECISIONS]
        if bad or not args.precisions:
            raise TargetError(f"unknown precision {bad[0] if bad else '(none)'}; choose from {', '.join(PRECISIONS)}")
        if (args.coco_ann is None) != (args.coco_images is None):
            raise TargetError("give both --coco-ann and --coco-images, or neither")
        if args.coco_ann is not None and not (args.coco_ann.is_file() and args.coco_images.is_dir()):
            raise TargetError(f"--coco-ann {args.coco_ann} must be a file and --coco-images "
                              f"{args.coco_images} a directory")
        targets = resolve_formats(args.backends, args.precisions, args.device, skip_export=args.skip_export)
        weights = exports.choose_weights(variants, args.weights, calibration=args.calibration)
        gemm_sizes = [int(x) for x in _none_or_list(args.gemm_sizes)]
        ablation = _none_or_list(args.ablation_variants)
        if ablation:
            ablation = parse_variants(",".join(ablation))
    except (ConvertError, TargetError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    models_dir = (args.models or exports.default_models_dir()).expanduser()
    out_dir = (args.out or RESULTS_ROOT / _utc(started).strftime("%Y%m%dT%H%M%SZ")).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    map_limit = args.map_limit or None
    eval_set = None
    if args.coco_ann is not None and not args.no_map:
        eval_set = accuracy.EvalSet(args.coco_ann, args.coco_images, "--coco-ann", map_limit)
    for t in targets:
        if t.reason:
            log.warning("%s: unavailable on --device %s: %s", t.format, args.device, t.reason)
    log.info("benchmark: %s on %s x %s x %s, %d threads, %d runs -> %s", args.device, ",".join(variants),
             ",".join(t.format for t in targets), ",".join(args.precisions), args.threads, args.runs, out_dir)

    machine = report.machine_info(args.threads)
    export_summary = exports.ExportSummary(skipped=bool(args.skip_export))
    ctx: dict[str, Any] = {"limits": None, "fusion_ablation": None}
    result = Matrix()
    notes: list[str] = []
    interrupted = False
    try:
        if not args.skip_export:
            models_dir.mkdir(parents=True, exist_ok=True)
            exports.export_all(targets, weights, models_dir, calibration_count=args.calibration_count,
                               progress=progress, summary=export_summary)
            log.info("%s", export_summary.summary())
        runnable = [t for t in targets if not t.reason]
        found = matrix.collect_artifacts(models_dir, variants, [t.backend for t in runnable], args.precisions)
        planned = matrix.plan_rows(variants, targets, args.precisions, found, weights, export_summary, args.device)
        if gemm_sizes:
            ctx["limits"] = limits.measure_limits(args.threads, gemm_sizes)
        from benchmarks.measure import bench_frames

        settings = matrix.MatrixSettings(
            device=args.device, threads=args.threads, warmup=args.warmup, runs=args.runs,
            max_seconds=args.max_row_seconds, limits=ctx["limits"],
            eval_set=eval_set, map_limit=map_limit, map_cache=models_dir / accuracy.CACHE_NAME,
            with_map=not args.no_map)
        with _redirect_logging(progress):
            result = matrix.run_matrix(planned, bench_frames(args.frame_size), settings, weights, progress=progress)
        interrupted = result.interrupted
        if gemm_sizes and not interrupted:  # again after the matrix: the better pass counts
            ctx["limits"] = limits.merge_limits(ctx["limits"], limits.measure_limits(args.threads, gemm_sizes))
        if ablation and not interrupted:
            ctx["fusion_ablation"] = context.fusion_ablation(ablation, args.ablation_threads,
                                                             runs=args.ablation_runs, warmup=min(args.warmup, 3))
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: writing what was measured")

    # ---------------------------------------------------------------------------- outputs
    rows = result.rows
    matrix.finalize(rows, ctx["limits"])
    checks = check_targets(rows)
    notes.extend(report.residual_notes(rows))
    problems = limits.share_problems(rows)
    for problem in problems:  # physically impossible: a probe is wrong, and the run says so
        log.error("%s", problem)
    notes.extend(f"PROBLEM: {p}" for p in problems)
    for w in weights.values():
        notes.extend(f"{w.variant}: {n}" for n in w.notes)
    if any(r.runtime_precision and "bf16" in r.runtime_precision.lower() for r in rows):
        notes.append("some OpenVINO rows computed in bf16 (runtime_precision): the CPU plug-in's default "
                     "for non-FP32 IR on CPUs with AVX-512 BF16")
    load_start = machine.get("load_average_start")
    if load_start and load_start[0] > 0.5 * (machine.get("cores") or 1):
        notes.append(f"the machine was busy (1-min load average {load_start[0]} on {machine.get('cores')} cores "
                     f"at the start): latencies include contention, and multi-threaded runtimes suffer most "
                     f"(a descheduled thread stalls the others at every operator); compare with --threads 1")
    machine["load_average_end"] = report.load_average()
    plot_files: list[str] = []
    if not args.no_plots:
        written, plot_notes = plots.plot_all(rows, ctx, out_dir)
        plot_files = [p.name for p in written]
        notes.extend(plot_notes)
    results = {
        "schema_version": SCHEMA_VERSION, "kind": "edgedet-benchmark", "created": _utc(started).isoformat(),
        "finished": _utc().isoformat(), "seconds": round(time.time() - started, 1),
        "command": "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in argv),
        "interrupted": interrupted, "not_measured": result.not_measured,
        "machine": machine, "settings": _settings(args, variants, targets, models_dir, weights, eval_set),
        "export": export_summary.to_dict(), "context": ctx, "rows": [r.to_dict() for r in rows],
        "checks": [c.to_dict() for c in checks], "plots": plot_files, "notes": notes,
    }
    report.write_json(out_dir / "results.json", results)
    report.write_csv(out_dir / "results.csv", rows)

    print(report.format_table(rows, ctx["limits"]))
    for text in (report.format_checks(checks), report.format_context(ctx)):
        if text:
            print("\n" + text)
    print("\n" + export_summary.summary())
    for n in notes:
        print(f"note: {n}")
    failed = [r for r in rows if r.status in ("failed", "export_failed")]
    print(f"{sum(r.ok for r in rows)} rows measured, {len(failed)} failed, "
          f"{sum(r.status in ('unavailable', 'missing') for r in rows)} not available; "
          f"{results['seconds']:.0f} s -> {out_dir}")
    if interrupted:
        print(f"interrupted: {len(result.not_measured)} rows not measured", file=sys.stderr)
        return 130
    return 0 if any(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
