"""MQTT output against a real broker (mosquitto, started here on a free port) and a real paho subscriber.

The loop is edgedet.video.run_loop on a generated video of one object crossing the frame:

* with a colour detector that really finds the object (tests/moving_scene.py says why the random
  INT8 weights cannot): one new/update.../end sequence, counts, availability, discovery, stats;
* with the real INT8 artifact (arbitrary but real detections, a real load) while the broker is
  stopped and restarted: the loop keeps detecting, the publisher drops what it cannot keep,
  reconnects, and its stats say so.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from moving_scene import OBJECT_H, OBJECT_W, RedObjectDetector, object_box, write_video

pytest.importorskip("paho.mqtt.client", reason='needs paho-mqtt: pip install "edgedet[mqtt]"')
pytest.importorskip("supervision", reason='needs supervision: pip install "edgedet[track]"')

import paho.mqtt.client as paho  # noqa: E402

from edgedet.loopmeter import LoopMeter, MeteredDetector  # noqa: E402
from edgedet.mqtt import MqttPublisher, MqttSettings, parse_broker  # noqa: E402
from edgedet.tracking import ByteTracker, TrackingDetector  # noqa: E402
from edgedet.video import run_loop  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
FRAMES = 60
pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(),
                                reason="needs the mosquitto broker (apt-get install -y mosquitto)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


class Broker:
    """mosquitto on 127.0.0.1 with its own config file; start/stop/restart on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                               f"log_dest file {self.log}\nlog_type error\nlog_type warning\nlog_type notice\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start: {self.process.stderr.read().decode()[-2000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A paho client that records every message under the topics given (re-subscribes on reconnect)."""

    def __init__(self, port: int, topics: tuple[str, ...] = ("edgedet/#", "homeassistant/#")) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id=f"sub-{port}")
        self.client.on_connect = lambda c, *_: [c.subscribe(t, qos=1) for t in topics]
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, "the subscriber to connect")
        time.sleep(0.2)  # the SUBACK

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def json(self, topic: str) -> list[dict]:
        return [json.loads(p) for p in self.on(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(broker):
    sub = Subscriber(broker.port)
    yield sub
    sub.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("mqtt") / "crossing.avi", frames=FRAMES)


def test_parse_broker_and_settings():
    assert parse_broker("broker.lan") == ("broker.lan", 1883)
    assert parse_broker("broker.lan", tls=True) == ("broker.lan", 8883)
    assert parse_broker("10.0.0.2:1884") == ("10.0.0.2", 1884)
    assert parse_broker("[::1]:1885") == ("::1", 1885)
    with pytest.raises(ValueError):
        parse_broker(":1883")
    settings = MqttSettings(camera="front door", username="u", password="hunter2")
    assert settings.camera == "front_door" and "hunter2" not in repr(settings)
    assert settings.client_id.startswith("edgedet-front_door-")
    with pytest.raises(ValueError):
        MqttSettings(prefix="a/#")


def test_one_object_makes_one_event_sequence_counts_and_stats(broker, subscriber, clip, caplog):
    caplog.set_level("INFO")
    detector = MeteredDetector(RedObjectDetector())
    tracked = TrackingDetector(detector, ByteTracker(frame_rate=10))
    meter = LoopMeter(detector)
    settings = MqttSettings(port=broker.port, camera="test", username="edgedet", password="s3cret-pw",
                            stats_interval_s=0.2, snapshots=True, update_interval_s=0.0, max_missed_frames=5)
    publisher = MqttPublisher(settings, stats=meter.snapshot).start()
    wait_for(lambda: publisher.connected, 10, "the publisher to connect")

    def on_frame(frame, detections, info):
        meter.on_frame(frame, detections, info)
        publisher.on_frame(frame, detections, info)
        time.sleep(0.02)  # a camera's pace: leaves the stats timer a few periods

    stats = run_loop(tracked, str(clip), display=False, on_frame=on_frame)
    publisher.close()
    wait_for(lambda: subscriber.on("edgedet/available")[-1:] == [b"offline"], 5, "offline")
    assert stats.frames == FRAMES

    # availability: online first, offline last
    assert subscriber.on("edgedet/available")[0] == b"online"
    assert subscriber.on("edgedet/available")[-1] == b"offline"

    # one object: one new, then updates, then one end, all with one id
    events = subscriber.json("edgedet/events")
    assert [e["type"] for e in events] == ["new"] + ["update"] * (len(events) - 2) + ["end"], events
    assert len(events) >= 10 and len({e["id"] for e in events}) == 1 and len({e["tracker_id"] for e in events}) == 1
    new, end = events[0], events[-1]
    assert new["label"] == "person" and new["camera"] == "test" and new["frame_width"] == 640
    x1, y1, x2, y2 = new["box"]
    # ByteTrack confirms a track that starts mid-video on its second sighting: the object's second frame.
    assert abs(x1 - object_box(FRAMES // 4 + 1, FRAMES)[0]) <= 3 and abs(y1 - 110) <= 3
    assert abs((x2 - x1) - OBJECT_W) <= 4 and abs((y2 - y1) - OBJECT_H) <= 4
    assert end["end_time"] >= new["start_time"] and end["top_score"] == pytest.approx(0.9)
    assert end["frames"] == FRAMES // 2 - 1  # seen in every frame it was in view (but the first)
    assert [e["box"][0] for e in events[:-1]] == sorted(e["box"][0] for e in events[:-1])  # it moves right

    # counts: 0 -> 1 -> 0 for the label and for all (retained: see the next test)
    assert subscriber.on("edgedet/test/person") == [b"1", b"0"]
    assert subscriber.on("edgedet/test/all") == [b"0", b"1", b"0"]

    # a JPEG of the new object: the red object's colour
    (snapshot,) = subscriber.on("edgedet/test/person/snapshot")
    image = cv2.imdecode(np.frombuffer(snapshot, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image[..., 2].mean() > image[..., 0].mean() + 40

    # Home Assistant discovery: a count and an occupancy sensor per label
    node = settings.client_id
    count = json.loads(subscriber.on(f"homeassistant/sensor/{node}/test_person_count/config")[0])
    occupancy = json.loads(subscriber.on(f"homeassistant/binary_sensor/{node}/test_person_occupancy/config")[0])
    assert count["state_topic"] == occupancy["state_topic"] == "edgedet/test/person"
    assert occupancy["device_class"] == "occupancy" and count["availability_topic"] == "edgedet/available"

    # stats: the loop's figures and the publisher's
    stats_msgs = subscriber.json("edgedet/stats")
    assert len(stats_msgs) >= 2
    last = stats_msgs[-1]
    assert last["frames"] > 0 and last["detection_fps"] > 0 and last["inference_ms"] > 0
    assert last["mqtt"]["connected"] is True and last["mqtt"]["dropped"] == 0 and last["mqtt"]["reconnects"] == 0
    assert "s3cret-pw" not in caplog.text  # credentials are never logged


def test_retained_state_reaches_a_late_subscriber(broker, clip):
    publisher = MqttPublisher(MqttSettings(port=broker.port, camera="late", stats_interval_s=0)).start()
    wait_for(lambda: publisher.connected, 10, "the publisher to connect")
    run_loop(TrackingDetector(RedObjectDetector(), ByteTracker()), str(clip), display=False, max_frames=FRAMES // 2,
             on_frame=publisher.on_frame)
    wait_for(lambda: publisher.published >= 4, 5, "the first messages")
    late = Subscriber(broker.port, ("edgedet/#",))
    try:
        wait_for(lambda: late.on("edgedet/late/person"), 5, "the retained count")
        assert late.on("edgedet/available") == [b"online"] and late.on("edgedet/late/person") == [b"1"]
    finally:
        publisher.close()
        late.close()


def test_broker_restart_mid_run_real_int8_detector(onnx_exports, broker, subscriber, clip, caplog):
    """The real INT8 artifact on the looped video; the broker is stopped for a while and comes back."""
    from edgedet.detector import Detector

    caplog.set_level("INFO")
    exports, _ = onnx_exports
    detector = MeteredDetector(Detector(variant="lite0", precision="int8", models=exports, profile_cache=False,
                                        threads=1, score_threshold=0.5))
    tracker = ByteTracker(frame_rate=10)
    tracked = TrackingDetector(detector, tracker)
    meter = LoopMeter(detector)
    # Events end when the tracker lets the id go (as camera_loop.py sets it): an id never comes back.
    settings = MqttSettings(port=broker.port, camera="int8", stats_interval_s=0.25, queue_size=20,
                            reconnect_min_s=1, reconnect_max_s=2, update_interval_s=0.0,
                            max_missed_frames=tracker.max_lost_frames)
    publisher = MqttPublisher(settings, stats=meter.snapshot).start()
    wait_for(lambda: publisher.connected, 10, "the publisher to connect")
    stop = threading.Event()
    result = {}
    seen = {}  # tracker id -> how many frames the loop saw it in

    def on_frame(frame, detections, info):
        meter.on_frame(frame, detections, info)
        t0 = time.perf_counter()
        publisher.on_frame(frame, detections, info)
        result["max_publish_s"] = max(result.get("max_publish_s", 0.0), time.perf_counter() - t0)
        for tid in detections.tracker_id.tolist():
            seen[tid] = seen.get(tid, 0) + 1

    from edgedet.video import open_source
    loop = threading.Thread(target=lambda: result.setdefault("stats", run_loop(
        tracked, open_source(str(clip), loop_file=True), display=False, stop_event=stop, on_frame=on_frame)))
    loop.start()
    try:
        wait_for(lambda: len(subscriber.json("edgedet/stats")) >= 2, 30, "stats while connected")
        broker.stop()
        stopped_at, frames_at_stop = time.monotonic(), meter.frames
        wait_for(lambda: not publisher.connected, 10, "the publisher to notice")
        wait_for(lambda: meter.frames >= frames_at_stop + 15 and publisher.dropped > 0
                 and time.monotonic() - stopped_at >= 3, 60,
                 "frames and drops while the broker is away")
        frames_during_outage = meter.frames - frames_at_stop
        broker.start()
        wait_for(lambda: publisher.reconnects >= 1, 30, "the publisher to reconnect")
        wait_for(lambda: subscriber.client.is_connected()
                 and any(s["mqtt"]["reconnects"] >= 1 for s in subscriber.json("edgedet/stats")), 30,
                 "stats that report the reconnect")
    finally:
        stop.set()
        loop.join(60)
        publisher.close()
    # (mosquitto, stopping, may deliver the publisher's last will "offline" first: wait for the last word)
    wait_for(lambda: subscriber.on("edgedet/available")[-1:] == [b"offline"], 10, "offline at exit")

    assert frames_during_outage >= 15  # detection went on without the broker
    assert result["max_publish_s"] < 0.05, "publishing blocked the frame loop"
    after = [s for s in subscriber.json("edgedet/stats") if s["mqtt"]["reconnects"] >= 1]
    assert after[0]["mqtt"]["dropped"] > 0 and after[0]["mqtt"]["connected"] is True
    assert subscriber.on("edgedet/available").count(b"online") >= 2  # again after the restart

    assert "reconnected" in caplog.text and "lost the broker" in caplog.text

    # The events the subscriber got are consistent per object: at most one new (first), one end (last).
    by_id: dict[str, list[str]] = {}
    for e in subscriber.json("edgedet/events"):
        by_id.setdefault(e["id"], []).append(e["type"])
        assert e["tracker_id"] in seen
    assert by_id, "the INT8 detector's tracks made no events"
    for event_id, kinds in by_id.items():
        assert kinds.count("new") <= 1 and kinds.count("end") <= 1, (event_id, kinds)
        assert "new" not in kinds[1:] and "end" not in kinds[:-1], (event_id, kinds)
    complete = [k for k in by_id.values() if k[0] == "new" and k[-1] == "end"]
    assert complete, "no object's whole life reached the subscriber"
    print(f"\nINT8 run: {result['stats'].summary()}; during the outage {frames_during_outage} frames; "
          f"publisher: published {publisher.published}, dropped {publisher.dropped}, reconnects {publisher.reconnects}; "
          f"{len(by_id)} objects, {len(complete)} complete sequences")


def test_camera_loop_script_with_track_mqtt_and_http(onnx_exports, broker, subscriber, clip, tmp_path):
    """The example script as under systemd: the INT8 model on a looping file, tracked ids in the JSON
    lines, MQTT and the web view on (token from the environment) until SIGTERM; offline at exit."""
    import os
    import signal
    import sys
    import urllib.error
    import urllib.request

    exports, _ = onnx_exports
    script = Path(__file__).resolve().parents[1] / "examples" / "raspberrypi" / "camera_loop.py"
    jsonl, http_port = tmp_path / "out.jsonl", free_port()
    env = {**os.environ, "PYTHONPATH": str(script.parents[2]), "EDGEDET_HTTP_TOKEN": "tok-7f3a9c",
           "EDGEDET_MQTT_PASSWORD": "never-logged", "EDGEDET_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, str(script), "--models", str(exports), "--variant", "lite0",
                             "--threads", "1", "--source", str(clip), "--loop", "--no-display", "--score-threshold", "0.5",
                             "--jsonl-out", str(jsonl), "--camera", "cli", "--mqtt", f"127.0.0.1:{broker.port}",
                             "--mqtt-username", "edgedet", "--mqtt-stats-interval", "0.5", "--http", f":{http_port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_for(lambda: proc.poll() is not None or len(subscriber.json("edgedet/stats")) >= 2, 120, "stats from the script")
        assert proc.poll() is None, proc.communicate()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/stats?token=tok-7f3a9c", timeout=10) as r:
            assert json.loads(r.read())["camera"] == "cli"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/stats", timeout=10)
        assert refused.value.code == 401
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "never-logged" not in output and "tok-7f3a9c" not in output
    wait_for(lambda: subscriber.on("edgedet/available")[-1:] == [b"offline"], 5, "offline")
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    tracked = [d for r in records for d in r["detections"]]
    assert tracked and all(isinstance(d["tracker_id"], int) for d in tracked)
    assert subscriber.json("edgedet/stats")[-1]["frames"] > 0 and subscriber.json("edgedet/events")
