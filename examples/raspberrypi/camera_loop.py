#!/usr/bin/env python3
"""Detect objects in a camera stream on a Raspberry Pi or a Jetson, with the largest EfficientDet
that meets a latency budget on this device. The loop itself is edgedet.video.run_loop; this script
only turns command-line options into its arguments.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from edgedet.backends import BackendError
from edgedet.cli_args import frame_size_arg
from edgedet.detector import BudgetError, Detector, NoArtifactsError
from edgedet.loopmeter import LoopMeter, MeteredDetector
from edgedet.video import JsonLinesWriter, SourceError, default_source, open_source, run_loop

EXAMPLES = """\
examples:
  %(prog)s --models models.edgedet --budget-ms 250                    # Pi camera (or camera 0)
  %(prog)s --source 0 --frame-size 640x480 --classes person,car --jsonl-out det.jsonl --no-display
  %(prog)s --source clip.mp4 --video-out annotated.mp4 --max-frames 300
  %(prog)s --mode throughput --budget-ms 250 --jsonl-out det.jsonl        # more frames/s, each a frame older
  %(prog)s --source "rtsp://user:pass@192.168.1.20:554/stream1" --budget-ms 100
  %(prog)s --track --mqtt broker.lan --camera porch --http :8080   # ids, MQTT, live view on localhost
  %(prog)s --backend onnxruntime --device tensorrt --budget-ms 40 \\
      --source "nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! \\
nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1"

Secrets stay off the command line (it shows in `ps`): the MQTT password and the web token are
read from $EDGEDET_MQTT_PASSWORD and $EDGEDET_HTTP_TOKEN (or --mqtt-password-file / --http-token-file).

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
    p.add_argument("--mode", choices=["latency", "throughput"], default="latency",
                   help="latency: one frame at a time, the freshest results; throughput: prepare the next frame "
                        "and record the last while one is in inference, for more frames per second, each result "
                        "about one frame older (default: %(default)s)")
    p.add_argument("--camera", default="camera", help="this camera's name in MQTT topics and the web page "
                                                      "(default: %(default)s)")
    p.add_argument("--track", action="store_true", help="give objects ids that stay from frame to frame (ByteTrack; "
                                                        "pip install 'edgedet[track]'); on with --mqtt")
    p.add_argument("--track-fps", type=float, default=10.0, help="detection rate the tracker expects (default: %(default)s)")
    m = p.add_argument_group("MQTT (pip install 'edgedet[mqtt]'; topics in README.md)")
    m.add_argument("--mqtt", metavar="HOST[:PORT]", help="publish counts, events and stats to this broker")
    m.add_argument("--mqtt-prefix", default="edgedet", help="topic prefix (default: %(default)s)")
    m.add_argument("--mqtt-client-id", help="client id (default: edgedet-CAMERA-HOSTNAME)")
    m.add_argument("--mqtt-username", help="broker user name")
    m.add_argument("--mqtt-password-file", metavar="PATH", help="file holding the password (default: "
                                                                 "$EDGEDET_MQTT_PASSWORD)")
    m.add_argument("--mqtt-tls", action="store_true", help="connect with TLS (port 8883 unless given)")
    m.add_argument("--mqtt-ca", metavar="PATH", help="CA certificate(s) for TLS (default: the system's)")
    m.add_argument("--mqtt-cert", metavar="PATH", help="client certificate for TLS")
    m.add_argument("--mqtt-key", metavar="PATH", help="client key for TLS")
    m.add_argument("--mqtt-tls-insecure", action="store_true", help="skip the broker host-name check (test setups)")
    m.add_argument("--mqtt-qos", type=int, default=0, choices=[0, 1, 2], help="QoS of counts, events and stats "
                                                                             "(default: 0)")
    m.add_argument("--mqtt-snapshots", action="store_true", help="publish a JPEG of each new object")
    m.add_argument("--mqtt-stats-interval", type=float, default=10.0, metavar="S", help="stats every S s (default: 10)")
    m.add_argument("--mqtt-no-discovery", action="store_true", help="no Home Assistant discovery")
    w = p.add_argument_group("web view")
    w.add_argument("--http", metavar="[HOST]:PORT", help="serve a live view (':8080' listens on 127.0.0.1 only; "
                                                        "'0.0.0.0:8080' on every interface)")
    w.add_argument("--http-token-file", metavar="PATH", help="file holding the token the view asks for (default: "
                                                             "$EDGEDET_HTTP_TOKEN; none: no token)")
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
        try:
            outputs = LiveOutputs(args, detector)  # tracking, MQTT and the web view, as asked
        except (ImportError, OSError) as exc:  # a missing extra, a port in use, a bad certificate: set-up errors
            raise ValueError(str(exc)) from exc
        jsonl = JsonLinesWriter(args.jsonl_out, append=args.append) if args.jsonl_out else None
        try:
            stats = run_loop(outputs.detector, source, max_frames=args.max_frames, classes=outputs.classes,
                             display=False if args.no_display else "auto", video_out=args.video_out, jsonl_out=jsonl,
                             on_frame=outputs.on_frame, mode=args.mode)
        finally:
            outputs.close()
    except (BudgetError, NoArtifactsError, BackendError, SourceError, FileNotFoundError, ValueError) as exc:
        # Set-up errors, which a restart does not fix: exit 2 (the service's RestartPreventExitStatus).
        # A camera that fails or disappears is not one: the loop reopens it.
        logging.getLogger("camera_loop").error("%s", exc)
        return 2
    print(stats.summary())
    return 0


def _secret(path: str | None, variable: str) -> str | None:
    """A secret from a file (first line) or an environment variable, never from the command line."""
    if path:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip() or None
    return os.environ.get(variable) or None


class LiveOutputs:
    """What --track, --mqtt and --http add to the loop: a detector to run and one on_frame hook."""

    def __init__(self, args: argparse.Namespace, detector: Detector) -> None:
        self.publisher = self.view = None
        self.classes = args.classes
        live = bool(args.mqtt or args.http)
        self.detector = MeteredDetector(detector) if live else detector
        self.meter = LoopMeter(self.detector) if live else None
        max_lost = 30
        if args.track or args.mqtt:  # MQTT events follow tracked objects
            from edgedet.tracking import ByteTracker, TrackingDetector

            tracker = ByteTracker(frame_rate=args.track_fps)
            max_lost = tracker.max_lost_frames
            # Classes are filtered before tracking, so that other classes take no ids.
            self.detector, self.classes = TrackingDetector(self.detector, tracker, args.classes), None
        self.hooks = [self.meter.on_frame] if self.meter else []
        try:
            if args.mqtt:
                from edgedet.mqtt import MqttPublisher, MqttSettings, parse_broker

                host, port = parse_broker(args.mqtt, tls=args.mqtt_tls)
                settings = MqttSettings(
                    host=host, port=port, prefix=args.mqtt_prefix, camera=args.camera, client_id=args.mqtt_client_id,
                    username=args.mqtt_username, password=_secret(args.mqtt_password_file, "EDGEDET_MQTT_PASSWORD"),
                    tls=args.mqtt_tls, ca_certs=args.mqtt_ca, certfile=args.mqtt_cert, keyfile=args.mqtt_key,
                    tls_insecure=args.mqtt_tls_insecure, qos=args.mqtt_qos, snapshots=args.mqtt_snapshots,
                    stats_interval_s=args.mqtt_stats_interval, discovery=not args.mqtt_no_discovery,
                    max_missed_frames=max_lost)
                self.publisher = MqttPublisher(settings, stats=self.meter.snapshot).start()
                self.hooks.append(self.publisher.on_frame)
            if args.http:
                from edgedet.webview import WebView, parse_listen

                host, port = parse_listen(args.http)
                token = _secret(args.http_token_file, "EDGEDET_HTTP_TOKEN")
                self.view = WebView(host, port, token=token, stats=self.meter.snapshot, camera=args.camera).start()
                self.hooks.append(self.view.on_frame)
        except BaseException:
            self.close()
            raise

    def on_frame(self, frame, detections, info) -> None:
        for hook in self.hooks:
            hook(frame, detections, info)

    def close(self) -> None:
        """Say offline and stop serving (the loop has ended)."""
        for output in (self.publisher, self.view):
            if output is not None:
                output.close()


if __name__ == "__main__":
    sys.exit(main())
