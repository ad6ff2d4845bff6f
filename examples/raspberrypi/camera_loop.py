#!/usr/bin/env python3
"""Detect objects in a camera stream on a Raspberry Pi or a Jetson, with the largest EfficientDet
that meets a latency budget on this device. The loop itself is edgedet.video.run_loop; this script
only turns command-line options into its arguments.
"""
from __future__ import annotations

import argparse
import logging
import sys

from edgedet.backends import BackendError
from edgedet.cli_args import frame_size_arg
from edgedet.detector import BudgetError, Detector, NoArtifactsError
from edgedet.video import JsonLinesWriter, SourceError, default_source, open_source, run_loop

EXAMPLES = """\
examples:
  %(prog)s --models models.edgedet --budget-ms 250                    # Pi camera (or camera 0)
  %(prog)s --source 0 --frame-size 640x480 --classes person,car --jsonl-out det.jsonl --no-display
  %(prog)s --source clip.mp4 --video-out annotated.mp4 --max-frames 300
  %(prog)s --source "rtsp://user:pass@192.168.1.20:554/stream1" --budget-ms 100
  %(prog)s --backend onnxruntime --device tensorrt --budget-ms 40 \\
      --source "nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! \\
nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1"

Stop with Ctrl-C (or SIGTERM, e.g. systemctl stop): the video and JSON lines are closed cleanly.
Exit status: 0 when stopped or at the end of a file; 2 for a set-up error (no models, no model
within the budget, bad source or option); 1 for anything else.
"""


def class_list(text: str) -> list[int | str]:
    return [int(c) if c.strip().isdigit() else c.strip() for c in text.split(",") if c.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=default_source(),
                   help="'picamera[:N]', a camera index or /dev/videoN, a video file, an rtsp:// or http:// URL, "
                        "or a GStreamer pipeline ending in appsink (default: %(default)s)")
    p.add_argument("--frame-size", type=frame_size_arg, default=(1280, 720), metavar="WxH",
                   help="size asked of the camera, and the frame size the budget is measured at (default: 1280x720)")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="end-to-end latency budget per frame (p90); the largest model within it is served "
                        "(default: 200, unless --variant)")
    p.add_argument("--variant", help="serve this variant (lite0, d0...) instead of choosing by budget")
    p.add_argument("--models", help="directory of exported models or a .edgedet bundle (default: $EDGEDET_MODELS "
                                    "or the edgedet cache)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "openvino", "tflite"])
    p.add_argument("--device", default="cpu", help="runtime device: cpu; cuda or tensorrt (onnxruntime on a Jetson)")
    p.add_argument("--threads", type=int, help="inference threads (default: the runtime's)")
    p.add_argument("--score-threshold", type=float, default=0.3, help="minimum confidence (default: %(default)s)")
    p.add_argument("--classes", type=class_list, metavar="A,B,...", help="keep only these classes (names or ids)")
    p.add_argument("--max-frames", type=int, help="stop after this many processed frames")
    p.add_argument("--video-out", metavar="PATH", help="record the annotated frames (.mp4 or .avi)")
    p.add_argument("--jsonl-out", metavar="PATH", help="one JSON line of detections per frame ('-': stdout)")
    p.add_argument("--append", action="store_true", help="append to --jsonl-out instead of replacing it")
    p.add_argument("--no-display", action="store_true", help="never open a window (default: one if there is a display)")
    p.add_argument("--loop", action="store_true", help="play a video file again from the start at its end")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    budget = args.budget_ms if args.budget_ms is not None or args.variant else 200.0

    try:
        source = open_source(args.source, frame_size=args.frame_size, loop_file=args.loop)  # checks, opens nothing
        detector = Detector(budget_ms=budget, variant=args.variant, models=args.models, backend=args.backend,
                            threads=args.threads, frame_size=args.frame_size, device=args.device,
                            score_threshold=args.score_threshold)
        print(detector.profile, file=sys.stderr)
        jsonl = JsonLinesWriter(args.jsonl_out, append=args.append) if args.jsonl_out else None
        stats = run_loop(detector, source, max_frames=args.max_frames, classes=args.classes,
                         display=False if args.no_display else "auto", video_out=args.video_out, jsonl_out=jsonl)
    except (BudgetError, NoArtifactsError, BackendError, SourceError, FileNotFoundError, ValueError) as exc:
        # Set-up errors, which a restart does not fix: exit 2 (the service's RestartPreventExitStatus).
        # A camera that fails or disappears is not one: the loop reopens it.
        logging.getLogger("camera_loop").error("%s", exc)
        return 2
    print(stats.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
