"""The camera loop's frame rate with the live outputs (tracking, MQTT, the web view with a viewer)
on and off, on a generated video with one moving object and the real INT8 lite0 model::

    python benchmarks/live_outputs.py --models /path/to/exports --frames 150 --rounds 2

Off and on alternate (``--rounds`` times) so that other load on the machine hits both alike; each
run starts its own mosquitto. A benchmark, not a test: report the machine's load with the figures.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the generated scene
sys.path.insert(0, str(Path(__file__).resolve().parent))  # start_broker

log = logging.getLogger("live_outputs")


def run(detector, video: Path, frames: int, live: bool, broker_port: int | None) -> dict:
    from edgedet.loopmeter import LoopMeter, MeteredDetector
    from edgedet.mqtt import MqttPublisher, MqttSettings
    from edgedet.tracking import ByteTracker, TrackingDetector
    from edgedet.video import open_source, run_loop
    from edgedet.webview import WebView

    if not live:
        stats = run_loop(detector, open_source(str(video), loop_file=True), max_frames=frames, display=False)
        return {"fps": stats.fps, "latency_ms": stats.mean_latency_ms}
    metered = MeteredDetector(detector)
    meter = LoopMeter(metered)
    tracked = TrackingDetector(metered, ByteTracker(frame_rate=10))
    publisher = MqttPublisher(MqttSettings(port=broker_port, camera="bench", stats_interval_s=1.0,
                                           snapshots=True), stats=meter.snapshot).start()
    view = WebView(port=0, token="bench", stats=meter.snapshot).start()
    stop = threading.Event()
    got = {"bytes": 0}

    def watch() -> None:  # a viewer, so that frames are encoded
        with urllib.request.urlopen(view.url + "stream.mjpg?token=bench", timeout=30) as r:
            while not stop.is_set():
                got["bytes"] += len(r.read(65536))

    viewer = threading.Thread(target=watch, daemon=True)
    viewer.start()

    def on_frame(frame, detections, info):
        meter.on_frame(frame, detections, info)
        publisher.on_frame(frame, detections, info)
        view.on_frame(frame, detections, info)

    try:
        stats = run_loop(tracked, open_source(str(video), loop_file=True), max_frames=frames, display=False,
                         on_frame=on_frame)
    finally:
        stop.set()
        publisher.close()
        view.close()
    return {"fps": stats.fps, "latency_ms": stats.mean_latency_ms, "mqtt_published": publisher.published,
            "mqtt_dropped": publisher.dropped, "jpeg_frames": view.encoded, "stream_bytes": got["bytes"]}


def main(argv: list[str] | None = None) -> int:
    from mqtt_throughput import start_broker
    from moving_scene import write_video

    from edgedet.detector import Detector

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="exported models (a directory or a .edgedet bundle)")
    p.add_argument("--variant", default="lite0")
    p.add_argument("--precision", default="int8")
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = Path(tempfile.mkdtemp())
    video = write_video(work / "scene.avi", frames=60)
    detector = Detector(variant=args.variant, precision=args.precision, models=args.models, profile_cache=False,
                        threads=args.threads, score_threshold=0.5)
    broker, port = start_broker(work)
    results: dict[str, list[dict]] = {"off": [], "on": []}
    try:
        run(detector, video, 10, False, None)  # warm-up
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                results[mode].append(run(detector, video, args.frames, mode == "on", port))
                print(mode, json.dumps(results[mode][-1]), flush=True)
    finally:
        broker.terminate()
        broker.wait(10)
    summary = {mode: round(statistics.median(r["fps"] for r in runs), 2) for mode, runs in results.items()}
    print(json.dumps({"median_fps": summary, "loadavg": os.getloadavg(), "cpus": os.cpu_count(),
                      "frames": args.frames, "model": f"{args.variant} {args.precision}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
