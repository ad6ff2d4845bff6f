#!/usr/bin/env python
"""The camera loop's two modes on one video file: frames per second and per-frame latency of the plain
loop (``run_loop(mode="latency")``) against the throughput mode (``mode="throughput"``: prepare,
inference and decode + outputs of consecutive frames overlapped on stage threads)::

    python benchmarks/throughput.py --models ~/.cache/edgedet/bench --frames 120 --rounds 2

For each artifact (``--variants`` × ``--backends`` × ``--precisions``) and each thread count (2 and
this process's usable cores, :func:`edgedet.cpu.usable_cores`; once when they are the same), both
modes run over the same generated video (``tests/moving_scene.py``: one object crossing a
textured scene, at ``--frame-size``, MJPG, every frame processed). The modes alternate within each
round (``--rounds``), and their order flips every round, so that other load on the machine hits both
alike; the table gives the median over rounds.

Per run: FPS (processed frames / the loop's wall time), the per-frame *work* latency p50/p90 (the
detector's preprocess + inference + decode, ``latency_ms`` of the JSON lines), and the *result
delay* p50/p90: how long after a frame left the reader its detections were ready (``latency_ms +
queue_ms``; the plain loop has no queue). With ``--record`` each run also writes the annotated
video (the outputs' share of a frame, which the throughput mode overlaps too).

OpenVINO's asynchronous API is probed separately (``--no-async-probe`` skips it): inference alone
on preprocessed frames, synchronous requests of the ``LATENCY``-hint model edgedet serves against
an ``AsyncInferQueue`` of the ``THROUGHPUT``-hint model (several streams) at the same thread count.

A benchmark, not a test: figures depend on the machine and its load (recorded in the JSON).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # moving_scene: the generated video

from edgedet.cli_args import frame_size_arg  # noqa: E402

log = logging.getLogger("throughput")

MODES = ("latency", "throughput")
BACKENDS = {"onnx": "onnxruntime", "onnxruntime": "onnxruntime", "openvino": "openvino", "tflite": "tflite"}


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": round(float(np.percentile(values, 50)), 2), "p90": round(float(np.percentile(values, 90)), 2)}


def run_once(detector: Any, video: Path, mode: str, frames: int, work: Path, record: bool) -> dict[str, Any]:
    """One run of the loop over ``frames`` frames of ``video``: its FPS and per-frame figures."""
    from edgedet.video import open_source, run_loop

    jsonl = work / f"{mode}.jsonl"
    stats = run_loop(detector, open_source(str(video), loop_file=True), max_frames=frames, display=False,
                     jsonl_out=jsonl, video_out=work / f"{mode}.avi" if record else None, mode=mode,
                     log_interval_s=3600)
    records = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    work_ms = [r["latency_ms"] for r in records]
    delay_ms = [r["latency_ms"] + r.get("queue_ms", 0.0) for r in records]
    return {"fps": round(stats.fps, 2), "frames": stats.frames, "work_ms": _percentiles(work_ms),
            "delay_ms": _percentiles(delay_ms), "stop_reason": stats.stop_reason}


def openvino_async_probe(artifact: Any, threads: int, batches: list[np.ndarray], seconds: float) -> dict[str, Any]:
    """Inference-only frames/s: synchronous requests (LATENCY hint, as served) vs an AsyncInferQueue
    over the THROUGHPUT-hint model (its optimal number of requests), same threads, same precision pin."""
    import openvino as ov

    m = artifact.manifest
    xml = artifact.model_path
    core = ov.Core()
    base: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads}
    if m.precision == "fp32":
        base["INFERENCE_PRECISION_HINT"] = "f32"  # as the Detector serves FP32 IR
    result: dict[str, Any] = {"threads": threads}

    def rate(run_batch: Any, finish: Any = None) -> float:
        for batch in batches[:3]:  # warm-up
            run_batch(batch)
        if finish:
            finish()
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            run_batch(batches[count % len(batches)])
            count += 1
        if finish:
            finish()
        return count / (time.perf_counter() - started)

    sync_model = core.compile_model(core.read_model(str(xml)), "CPU", {**base, "PERFORMANCE_HINT": "LATENCY"})
    request = sync_model.create_infer_request()
    result["sync_fps"] = round(rate(lambda b: request.infer({0: b})), 2)
    async_model = core.compile_model(core.read_model(str(xml)), "CPU", {**base, "PERFORMANCE_HINT": "THROUGHPUT"})
    requests = int(async_model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(async_model, requests)
    result["async_fps"] = round(rate(lambda b: queue.start_async({0: b}), queue.wait_all), 2)
    result["async_requests"] = requests
    result["async_streams"] = int(async_model.get_property("NUM_STREAMS"))
    result["async_speedup"] = round(result["async_fps"] / result["sync_fps"], 3)
    return result


def table(rows: list[dict[str, Any]]) -> str:
    header = ("artifact", "threads", "FPS plain", "FPS thru", "x", "work p50/p90 plain", "work p50/p90 thru",
              "delay p50/p90 plain", "delay p50/p90 thru")

    def pair(figures: dict[str, float] | None) -> str:
        return "-" if not figures else f"{figures['p50']:.1f}/{figures['p90']:.1f}"

    lines = []
    for row in rows:
        plain, thru = row["median"]["latency"], row["median"]["throughput"]
        speedup = thru["fps"] / plain["fps"] if plain["fps"] else float("nan")
        lines.append((row["artifact"], str(row["threads"]), f"{plain['fps']:.1f}", f"{thru['fps']:.1f}",
                      f"{speedup:.2f}", pair(plain["work_ms"]), pair(thru["work_ms"]), pair(plain["delay_ms"]),
                      pair(thru["delay_ms"])))
    widths = [max(len(x) for x in col) for col in zip(header, *lines)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in (header, *lines))


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median FPS (its latencies come with it, not medians of other runs)."""
    ordered = sorted(runs, key=lambda r: r["fps"])
    return ordered[(len(ordered) - 1) // 2]


def main(argv: list[str] | None = None) -> int:
    from moving_scene import write_video

    from edgedet.cpu import usable_cores
    from edgedet.detector import Detector, NoArtifactsError, find_artifacts
    from edgedet.profiling import device_fingerprint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="exported artifacts (default: the benchmark's cache, "
                                                  "<edgedet cache>/bench, which benchmarks/run.py fills)")
    p.add_argument("--variants", default="lite0,d0", help="comma-separated (default: %(default)s)")
    p.add_argument("--backends", default="onnxruntime,openvino", help="comma-separated (default: %(default)s)")
    p.add_argument("--precisions", default="int8,fp32", help="comma-separated (default: %(default)s)")
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default: 2 and the usable cores)")
    p.add_argument("--frames", type=int, default=120, help="frames per run (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each mode per artifact (default: %(default)s)")
    p.add_argument("--frame-size", type=frame_size_arg, default=(1280, 720), metavar="WxH",
                   help="the video's frame size (default: 1280x720)")
    p.add_argument("--record", action="store_true", help="also write the annotated video in every run")
    p.add_argument("--no-async-probe", action="store_true", help="skip the OpenVINO async-inference probe")
    p.add_argument("--out", type=Path, default=None, help="JSON results file (default: "
                                                          "benchmarks/results/throughput-<UTC time>.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.models is None:
        from benchmarks.exports import default_models_dir

        args.models = str(default_models_dir())
    cores = usable_cores()
    threads = sorted({int(t) for t in _csv(args.threads)} if args.threads else {min(2, cores), cores})
    backends = [BACKENDS.get(b, b) for b in _csv(args.backends)]
    wanted = [(v, b, prec) for v in _csv(args.variants) for b in backends for prec in _csv(args.precisions)]
    found = {(a.manifest.variant, a.manifest.backend, a.manifest.precision): a for a in find_artifacts(args.models)}
    missing = [f"{v}/{b}-{prec}" for v, b, prec in wanted if (v, b, prec) not in found]
    if missing:
        print(f"missing in {args.models}: {', '.join(missing)}. Export them first, e.g. python benchmarks/run.py "
              f"--variants {args.variants} --backends {','.join(b.replace('onnxruntime', 'onnx') for b in backends)} "
              f"--precisions {args.precisions} --models {args.models}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="edgedet-throughput-"))
    video = write_video(work / "scene.avi", frames=60, size=tuple(args.frame_size), fps=30.0)
    out = args.out or ROOT / "benchmarks" / "results" / f"throughput-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    result: dict[str, Any] = {"machine": device_fingerprint(), "usable_cores": cores, "threads": threads,
                              "frames": args.frames, "rounds": args.rounds, "frame_size": list(args.frame_size),
                              "record": args.record, "load_average_start": list(os.getloadavg()), "rows": [],
                              "openvino_async": []}
    for variant, backend, precision in wanted:
        artifact = found[(variant, backend, precision)]
        for n in threads:
            try:
                detector = Detector(variant=variant, backend=backend, precision=precision, models=args.models,
                                    threads=n, profile_cache=False, score_threshold=0.3)
            except NoArtifactsError as exc:
                print(f"skipping {artifact.name}: {exc}", file=sys.stderr)
                continue
            run_once(detector, video, "latency", 5, work, False)  # warm-up: first calls allocate
            runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
            for round_ in range(args.rounds):
                for mode in (MODES if round_ % 2 == 0 else MODES[::-1]):
                    runs[mode].append(run_once(detector, video, mode, args.frames, work, args.record))
            row = {"artifact": artifact.name, "threads": n, "runs": runs,
                   "median": {mode: _median_run(r) for mode, r in runs.items()}}
            result["rows"].append(row)
            print(f"{artifact.name} threads={n}: " + ", ".join(f"{mode} {r['fps']:.1f} FPS"
                                                                for mode, r in row["median"].items()), flush=True)
            if backend == "openvino" and not args.no_async_probe:
                batches = [detector.pipeline.prepare([frame])[0] for frame in _frames(video, 4)]
                probe = {"artifact": artifact.name, **openvino_async_probe(artifact, n, batches, seconds=5.0)}
                result["openvino_async"].append(probe)
                print(f"  OpenVINO inference only: sync {probe['sync_fps']:.1f}/s, async {probe['async_fps']:.1f}/s "
                      f"({probe['async_requests']} requests, {probe['async_streams']} streams)", flush=True)
            detector.close()
    result["load_average_end"] = list(os.getloadavg())
    print()
    print(table(result["rows"]))
    print(f"\nFPS: median of {args.rounds} run(s) of {args.frames} frames; work = preprocess + inference + decode "
          "per frame; delay = from leaving the reader to detections ready (ms). Load average start/end: "
          f"{result['load_average_start'][0]:.2f}/{result['load_average_end'][0]:.2f} on {cores} usable cores.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0 if result["rows"] else 1


def _frames(video: Path, count: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


if __name__ == "__main__":
    sys.exit(main())
