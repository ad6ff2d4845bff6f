"""The camera loop (edgedet.video) on real video files, a real OpenCV and a real Detector.

Videos are written in the test with cv2.VideoWriter (MJPG .avi of synthetic scenes), the detector
is the lite0 INT8 ONNX artifact on onnxruntime. Failures are injected into real sources: a
FrameSource subclass around a real file capture that stops delivering, a camera device that does
not exist, frames of the wrong shape mixed into a real stream. Nothing of OpenCV or onnxruntime
is mocked.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.data.synthetic import SyntheticConfig, render
from edgedet.detections import Detections
from edgedet.video import (FrameSource, JsonLinesWriter, LatestFrameReader, SourceError, VideoCaptureSource,
                           VideoFileWriter, _opencv_has, iter_frames, jetson_csi_pipeline, open_source, overlay,
                           picamera_available, run_loop)

from video_clip import FAST, FPS, FRAMES, HEIGHT, WIDTH, clip, detector  # noqa: F401  (fixtures)


def decode_all(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not open"
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------ the loop


def test_loop_records_video_and_json_lines(detector, clip, tmp_path, caplog, monkeypatch):
    video, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    monkeypatch.delenv("DISPLAY", raising=False)  # as under systemd: headless whatever OpenCV this is
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with caplog.at_level(logging.INFO, logger="edgedet.video"):
        stats = run_loop(detector, str(clip), max_frames=25, display="auto", video_out=video, jsonl_out=jsonl)
    assert stats.frames == 25 and stats.stop_reason == "max_frames"
    assert stats.skipped == stats.dropped == stats.reconnects == 0  # a file is processed frame by frame
    assert stats.mean_latency_ms > 0 and stats.p90_latency_ms >= 0 and stats.fps > 0
    if sys.platform.startswith("linux"):
        assert "running headless" in caplog.text  # no GUI in OpenCV, or no DISPLAY: no window, no crash

    recorded = decode_all(video)
    assert len(recorded) == 25
    assert recorded[0].shape == (HEIGHT, WIDTH, 3)
    cap = cv2.VideoCapture(str(video))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)  # every frame processed: the file's timing
    cap.release()
    assert not list(tmp_path.glob("*.part*"))
    assert stats.video_path == str(video) and stats.jsonl_path == str(jsonl)

    records = read_jsonl(jsonl)
    assert [r["frame"] for r in records] == list(range(25))
    assert [r["source_frame"] for r in records] == list(range(25))
    assert all(r["width"] == WIDTH and r["height"] == HEIGHT and r["latency_ms"] > 0 for r in records)
    assert all(abs(r["timestamp"] - time.time()) < 600 for r in records)
    assert {r["artifact"] for r in records} == {"lite0/onnxruntime-int8"}  # what served each frame
    # The records are the detector's on those very frames.
    source = decode_all(clip)
    for i in (0, 24):
        expected = detector(source[i])
        got = Detections.from_json_records(records[i]["detections"], labels=detector.labels)
        assert len(got) == len(expected) > 0
        np.testing.assert_allclose(got.xyxy, expected.xyxy, atol=1e-3)
        np.testing.assert_array_equal(got.class_id, expected.class_id)
        assert records[i]["detections"][0]["class_name"] == expected.class_names[0]
    # The video holds the annotated frames: the status line's black box in the top-left corner.
    assert recorded[0][2:12, 2:40].mean() < 60 < source[0][2:12, 2:40].mean() + 60


def test_file_runs_to_its_end_and_classes_filter(detector, clip, tmp_path):
    probe = detector(decode_all(clip)[0])
    keep = probe.class_names[0]
    jsonl = tmp_path / "out.jsonl"
    stats = run_loop(detector, clip, classes=[keep], display=False, video_out=tmp_path / "out.avi", jsonl_out=jsonl)
    assert stats.stop_reason == "end of stream" and stats.frames == FRAMES and stats.captured == FRAMES
    records = read_jsonl(jsonl)
    assert len(records) == FRAMES
    names = {d["class_name"] for r in records for d in r["detections"]}
    assert names == {keep}
    assert len(decode_all(tmp_path / "out.avi")) == FRAMES
    with pytest.raises(ValueError, match="unknown class name"):
        run_loop(detector, clip, classes=["no-such-class"], display=False)


class FlakySource(VideoCaptureSource):
    """A real file capture that stops delivering after ``fail_after`` frames (read returns None, as
    an unplugged camera does) until it is reopened; the first ``open_failures`` reopenings fail (the
    device is not back yet)."""

    def __init__(self, path: Path, fail_after: int, *, live: bool, open_failures: int = 0) -> None:
        super().__init__(str(path), live=live, description="flaky camera")
        self.fail_after, self.open_failures = fail_after, open_failures
        self.opens = self.reads = 0
        self.dead = False
        self.died = False

    def open(self) -> None:
        if self.died and self.open_failures > 0:
            self.open_failures -= 1
            raise SourceError("device not back yet")
        super().open()
        self.opens += 1
        self.dead = False

    def read(self):
        if self.dead:
            return None
        if not self.died and self.reads >= self.fail_after:
            self.died = self.dead = True
            return None
        self.reads += 1
        return super().read()


def test_source_dying_mid_stream_is_reopened(detector, clip, tmp_path, caplog):
    source = FlakySource(clip, fail_after=10, live=False)
    jsonl = tmp_path / "out.jsonl"
    with caplog.at_level(logging.INFO, logger="edgedet.video"):
        stats = run_loop(detector, source, display=False, jsonl_out=jsonl, reader_options=FAST)
    # 10 frames, the failure, a reopen (the file starts again), then all 40 to the end.
    assert stats.reconnects == 1 and source.opens == 2
    assert stats.frames == 10 + FRAMES and stats.stop_reason == "end of stream"
    assert "stopped delivering (3 failed reads in a row)" in caplog.text
    assert "reopened (reconnect 1)" in caplog.text
    assert len(read_jsonl(jsonl)) == stats.frames


def test_live_source_reopened_with_backoff_until_it_is_back(detector, clip, tmp_path, caplog):
    source = FlakySource(clip, fail_after=10, live=True, open_failures=2)
    with caplog.at_level(logging.INFO, logger="edgedet.video"):
        started = time.monotonic()
        stats = run_loop(detector, source, max_frames=20, display=False, drop_frames=False,
                         video_out=tmp_path / "out.avi", reader_options=FAST)
    assert stats.frames == 20 and stats.stop_reason == "max_frames" and stats.reconnects == 1
    waits = [float(w) for w in re.findall(r"(?:retrying|reopening) in ([0-9.]+) s", caplog.text)]
    assert waits == [0.05, 0.1, 0.2]  # release, then each failed reopen doubles the wait
    assert time.monotonic() - started >= sum(waits)
    assert len(decode_all(tmp_path / "out.avi")) == 20


def test_camera_that_does_not_exist_is_retried_not_fatal(caplog):
    source = open_source("/dev/video97")
    assert source.live and not source.finite
    reader = LatestFrameReader(source, **FAST)
    with caplog.at_level(logging.WARNING, logger="edgedet.video"):
        with reader:
            time.sleep(0.5)
            assert reader.get(timeout=0.1) is None and not reader.finished
        assert not reader.running  # stop() joined the capture thread during its backoff wait
    assert reader.open_attempts >= 3 and reader.error is None
    assert "cannot open camera /dev/video97" in caplog.text and "retrying in 0.1 s" in caplog.text


class BadFramesSource(VideoCaptureSource):
    """A real file capture with frames of the wrong shape or dtype mixed in."""

    BAD = {3: "gray", 8: "bgra", 13: "float", 21: "empty", 30: "gray"}

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), live=False, description="bad frames")
        self.n = 0

    def read(self):
        frame = super().read()
        if frame is None:
            return None
        kind = self.BAD.get(self.n)
        self.n += 1
        if kind == "gray":
            return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        if kind == "bgra":
            return cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)
        if kind == "float":
            return frame.astype(np.float32) / 255
        if kind == "empty":
            return frame[:0]
        return frame


def test_frames_of_the_wrong_shape_are_skipped_and_counted(detector, clip, tmp_path, caplog):
    jsonl, video = tmp_path / "out.jsonl", tmp_path / "out.avi"
    with caplog.at_level(logging.WARNING, logger="edgedet.video"):
        stats = run_loop(detector, BadFramesSource(clip), display=False, video_out=video, jsonl_out=jsonl)
    bad = len(BadFramesSource.BAD)
    assert stats.skipped == bad and stats.frames == FRAMES - bad and stats.stop_reason == "end of stream"
    assert caplog.text.count("skipping frame") == bad and "grayscale" in caplog.text
    records = read_jsonl(jsonl)
    assert len(records) == FRAMES - bad
    assert not {r["source_frame"] for r in records} & set(BadFramesSource.BAD)
    assert len(decode_all(video)) == FRAMES - bad


def test_stop_event_from_another_thread(detector, clip, tmp_path):
    """run_loop in a worker thread (no signal handlers there), stopped by an event."""
    stop = threading.Event()
    video = tmp_path / "out.mp4"
    result = {}
    handler_before = signal.getsignal(signal.SIGTERM)

    def work():
        source = open_source(clip, loop_file=True, realtime=True)
        result["stats"] = run_loop(detector, source, display=False, video_out=video, stop_event=stop)

    worker = threading.Thread(target=work)
    worker.start()
    time.sleep(1.5)
    assert signal.getsignal(signal.SIGTERM) is handler_before  # not installed off the main thread
    stop.set()
    worker.join(10)
    assert not worker.is_alive()
    stats = result["stats"]
    assert stats.stop_reason == "stop_event" and stats.frames > 3
    assert stats.captured - stats.dropped - stats.frames in (0, 1)  # a live source: newest frame only
    assert len(decode_all(video)) == stats.frames
    assert not list(tmp_path.glob("*.part*"))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_the_loop_cleanly_and_handlers_are_restored(detector, clip, tmp_path, signum):
    seen = []

    def guard(sig, frame):  # only if run_loop did not take the signal: then the test fails, not pytest
        seen.append(sig)

    previous = signal.signal(signum, guard)
    video, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signum))
    try:
        timer.start()
        stats = run_loop(detector, open_source(clip, loop_file=True), display=False, video_out=video,
                         jsonl_out=jsonl)
        assert signal.getsignal(signum) is guard  # restored
    finally:
        timer.cancel()
        signal.signal(signum, previous)
    assert seen == []
    assert stats.stop_reason == signal.Signals(signum).name and stats.frames > 3
    assert len(decode_all(video)) == stats.frames == len(read_jsonl(jsonl))
    assert not list(tmp_path.glob("*.part*"))


# ------------------------------------------------------------------------------------ the reader


def test_newest_frame_wins_and_drops_are_counted(clip):
    """A fast source (a file decoded as fast as it goes) and a deliberately slow consumer."""
    reader = LatestFrameReader(open_source(clip, loop_file=True), drop_frames=True)
    indices = []
    with reader:
        for _ in range(8):
            item = reader.get_frame(timeout=5)
            assert item is not None and item.image.shape == (HEIGHT, WIDTH, 3)
            indices.append(item.index)
            time.sleep(0.05)
    assert reader.dropped > 0
    gaps = np.diff(indices)
    assert (gaps >= 1).all() and gaps.mean() > 2  # frames were skipped over, never repeated
    pending = reader.captured - reader.delivered - reader.dropped
    assert reader.delivered == 8 and pending in (0, 1)


def test_loop_drops_frames_of_a_fast_source(detector, clip):
    stats = run_loop(detector, open_source(clip, loop_file=True), max_frames=8, display=False, drop_frames=True)
    assert stats.frames == 8 and stats.dropped > 0
    assert stats.captured - stats.dropped - stats.frames in (0, 1)


def test_end_of_file_is_the_end_unless_asked_to_reconnect(clip):
    reader = LatestFrameReader(open_source(clip), **FAST)
    got = 0
    with reader:
        while reader.get(timeout=5) is not None:
            got += 1
        assert reader.finished
    assert got == FRAMES and reader.eof and reader.reconnects == reader.failures == 0 and reader.error is None
    assert sum(1 for _ in iter_frames(clip)) == FRAMES

    reader = LatestFrameReader(open_source(clip), reconnect_on_eof=True, **FAST)
    with reader:
        for _ in range(FRAMES + 5):
            assert reader.get(timeout=5) is not None
    assert reader.reconnects >= 1 and not reader.eof


def test_file_that_does_not_decode_raises(detector, tmp_path):
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(SourceError, match="cannot open file"):
        run_loop(detector, junk, display=False, video_out=tmp_path / "out.avi", reader_options=FAST)
    assert not (tmp_path / "out.avi").exists()
    with pytest.raises(FileNotFoundError, match="not found"):
        open_source(tmp_path / "missing.mp4")


# ------------------------------------------------------------------------------------ sources, writers


def test_source_specs():
    camera = open_source("0")
    assert isinstance(camera, VideoCaptureSource) and camera.target == 0 and camera.live
    assert open_source(2).target == 2
    stream = open_source("rtsp://admin:secret@10.0.0.5:554/stream1")
    assert stream.live and stream.api == cv2.CAP_FFMPEG and "secret" not in stream.description
    custom = FrameSource()
    assert open_source(custom) is custom
    pipeline = jetson_csi_pipeline(sensor_id=1, width=1920, height=1080, fps=30)
    assert pipeline.startswith("nvarguscamerasrc sensor-id=1") and pipeline.endswith("sync=false")
    assert "appsink drop=true max-buffers=1" in pipeline
    if not _opencv_has("GStreamer"):
        with pytest.raises(SourceError, match="without GStreamer"):
            open_source(pipeline)
    if not picamera_available():
        with pytest.raises(SourceError, match="picamera2"):
            open_source("picamera:0")
    with pytest.raises(ValueError):
        open_source("picamera:x")


def test_video_module_needs_no_torch():
    code = ("import sys, edgedet.video; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'picamera2', 'converters')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_video_writer_measures_fps_resizes_and_leaves_part_file_only_when_not_closed(tmp_path):
    frames = [np.full((HEIGHT, WIDTH, 3), 40 * i, np.uint8) for i in range(6)]
    writer = VideoFileWriter(tmp_path / "a.avi")
    for frame in frames[:3]:
        writer.write(frame)
        time.sleep(0.1)  # ~10 frames per second
    writer.write(cv2.resize(frames[3], (160, 120)))  # another size: resized to the first
    assert not (tmp_path / "a.avi").exists()
    assert writer.close() == tmp_path / "a.avi"
    assert 5 <= writer.fps <= 12
    out = decode_all(tmp_path / "a.avi")
    assert len(out) == 4 and out[3].shape == (HEIGHT, WIDTH, 3)

    crashed = VideoFileWriter(tmp_path / "b.avi", fps=10)
    for frame in frames:
        crashed.write(frame)
    # Not closed (a killed process): only the partial file exists, under a name that says so.
    assert (tmp_path / "b.part.avi").exists() and not (tmp_path / "b.avi").exists()
    crashed.close()
    assert (tmp_path / "b.avi").exists() and not (tmp_path / "b.part.avi").exists()

    empty = VideoFileWriter(tmp_path / "c.mp4")
    assert empty.close() is None and not list(tmp_path.glob("c*"))
    with pytest.raises(ValueError, match="codec"):
        VideoFileWriter(tmp_path / "d.gif")


def test_json_lines_and_overlay(tmp_path):
    dets = Detections([[10, 20, 100, 120]], [0.9], [1], labels=["a", "b"])
    path = tmp_path / "x.jsonl"
    with JsonLinesWriter(path) as writer:
        writer.write_frame(frame=0, source_frame=3, timestamp=1.5, latency_ms=12.3456, size=(320, 240),
                           detections=dets)
        assert len(path.read_text().splitlines()) == 1  # flushed per line
    record = read_jsonl(path)[0]
    assert record["source_frame"] == 3 and record["latency_ms"] == 12.346
    assert record["detections"][0]["class_name"] == "b" and record["detections"][0]["xyxy"] == [10, 20, 100, 120]
    with JsonLinesWriter(path, append=True) as writer:
        writer.write({"frame": 1})
    assert len(read_jsonl(path)) == 2

    frame = np.full((HEIGHT, WIDTH, 3), 200, np.uint8)
    drawn = overlay(frame, dets, fps=9.5, latency_ms=101, text="lite0 int8")
    assert drawn is not frame and frame.min() == 200  # a copy, the input untouched
    assert drawn[3:10, 3:60].mean() < 150  # the status box


# ------------------------------------------------------------------------------------ the example script

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "raspberrypi" / "camera_loop.py"


def test_example_script_help():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for option in ("--source", "--budget-ms", "--models", "--backend", "--threads", "--classes", "--max-frames",
                   "--video-out", "--jsonl-out", "--no-display", "--frame-size", "--score-threshold"):
        assert option in out.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_example_script_stops_cleanly_on_sigterm(onnx_exports, clip, tmp_path):
    """As under systemd: the script runs on a looping file until SIGTERM, then exits 0 with its
    video finished and playable."""
    exports, _ = onnx_exports
    video, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--models", str(exports), "--variant", "lite0",
                             "--threads", "1", "--source", str(clip), "--loop", "--no-display",
                             "--video-out", str(video), "--jsonl-out", str(jsonl), "--classes", "0,1,2,3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 5:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "stopped: SIGTERM" in output
    lines = len(read_jsonl(jsonl))
    assert lines >= 5 and len(decode_all(video)) == lines


# ------------------------------------------------------------------------------------ soak


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_soak_memory_stays_flat(detector, tmp_path):
    """2000 processed frames from a looping 60 fps file delivered in real time (so, on a CPU slower
    than 60 detections a second, frames are dropped too), recording video and JSON lines. RSS is
    sampled after a 300-frame warm-up and at the end.

    The bound: everything the loop holds per frame is released each iteration. A 320x240 frame is
    225 KiB, so keeping one per processed frame would grow RSS by ~380 MiB over the 1700 frames after
    warm-up; keeping one frame's JSON record list (~2-10 KiB), 3-17 MiB. 8 MiB leaves room for
    allocator and runtime-arena noise and still catches any per-frame leak above ~5 KiB.
    """
    clip60 = tmp_path / "clip60.avi"
    writer = cv2.VideoWriter(str(clip60), cv2.VideoWriter_fourcc(*"MJPG"), 60.0, (WIDTH, HEIGHT))
    config = SyntheticConfig(image_size=(WIDTH, HEIGHT), max_objects=6)
    for i in range(FRAMES):
        writer.write(render(i, config)[0])
    writer.release()
    samples = {}

    def sample(frame, detections, item, counter=[0]):
        counter[0] += 1
        if counter[0] in (300, 1000, 1500, 2000):
            samples[counter[0]] = rss_bytes()

    source = open_source(clip60, loop_file=True, realtime=True)
    stats = run_loop(detector, source, max_frames=2000, display=False, video_out=tmp_path / "soak.avi",
                     jsonl_out=tmp_path / "soak.jsonl", on_frame=sample)
    assert stats.frames == 2000
    growth = samples[2000] - samples[300]
    mib = {k: round(v / 2**20, 1) for k, v in samples.items()}
    print(f"\nsoak: {stats.summary()}\nRSS MiB at frames {mib}; growth after warm-up {growth / 2**20:.2f} MiB")
    assert growth < 8 * 2**20, mib
    assert len(read_jsonl(tmp_path / "soak.jsonl")) == 2000
    assert len(decode_all(tmp_path / "soak.avi")) == 2000
