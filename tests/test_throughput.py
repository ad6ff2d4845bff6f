"""The camera loop's throughput mode (``run_loop(..., mode="throughput")``, edgedet/video/pipelined.py)
on real video files, a real OpenCV and the real lite0 INT8 ONNX artifact on onnxruntime.

What is checked: every frame of a file comes out exactly once and in order, with the same detections
as the plain loop gives for the same frames and the artifact that served it; refused frames are
skipped and counted; adaptive serving is told each frame's own work; the loop ends cleanly on
``max_frames``, a stop event, SIGTERM, a source that dies mid-run (its clear error, the frames before
it recorded) and a detector that fails, with no stage thread left behind. Runs that could hang run
in a worker thread joined with a timeout. No timing is asserted.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pytest

from edgedet.detector import Detector
from edgedet.loopmeter import MeteredDetector
from edgedet.video import SourceError, VideoCaptureSource, open_source, run_loop
from edgedet.video.pipelined import CallStages, DetectorStages, stages_for

from video_clip import FAST, FRAMES, clip, detector  # noqa: F401  (fixtures)

HANG_S = 120  # a run that has not ended by then is hung (a normal one takes seconds)
SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "raspberrypi" / "camera_loop.py"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not open"
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    return count


def stage_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("edgedet-loop") and t.is_alive()]


def in_thread(work: Callable[[], Any], timeout: float = HANG_S) -> tuple[Any, BaseException | None]:
    """``work()`` on a worker thread: (its result, the exception it raised); fails the test if it hangs."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = work()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    worker = threading.Thread(target=target, name="test-worker")
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"run_loop did not end within {timeout} s"
    return out.get("result"), out.get("error")


def same_detections(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    if [d["class_id"] for d in a] != [d["class_id"] for d in b]:
        return False
    boxes_a, boxes_b = np.array([d["xyxy"] for d in a]), np.array([d["xyxy"] for d in b])
    conf_a, conf_b = np.array([d["confidence"] for d in a]), np.array([d["confidence"] for d in b])
    return bool(np.allclose(boxes_a, boxes_b, atol=1e-2) and np.allclose(conf_a, conf_b, atol=1e-4))


# ------------------------------------------------------------------------------------ order and results


def test_every_frame_once_in_order_with_the_plain_loops_detections(detector, clip, tmp_path):
    plain_jsonl, jsonl, video = tmp_path / "plain.jsonl", tmp_path / "fast.jsonl", tmp_path / "fast.avi"
    plain = run_loop(detector, clip, display=False, jsonl_out=plain_jsonl)
    stats = run_loop(detector, clip, display=False, jsonl_out=jsonl, video_out=video, mode="throughput")
    assert plain.mode == "latency" and stats.mode == "throughput"
    assert stats.frames == plain.frames == FRAMES and stats.stop_reason == "end of stream"
    assert stats.skipped == 0 and stats.dropped == 0 and "throughput mode" in stats.summary()
    assert stats.mean_queue_ms is not None and stats.mean_queue_ms >= 0

    records, plain_records = read_jsonl(jsonl), read_jsonl(plain_jsonl)
    assert [r["source_frame"] for r in records] == list(range(FRAMES))  # each once, in capture order
    assert [r["frame"] for r in records] == list(range(FRAMES))
    assert [r["timestamp"] for r in records] == sorted(r["timestamp"] for r in records)
    assert all(r["artifact"] == detector.artifact.name == "lite0/onnxruntime-int8" for r in records)
    # The same schema, plus the wait between stages.
    assert all(set(r) == set(p) | {"queue_ms"} and r["queue_ms"] >= 0 for r, p in zip(records, plain_records))
    assert not any("queue_ms" in p for p in plain_records)
    assert sum(len(r["detections"]) for r in records) > 0  # random weights: plenty of boxes to compare
    differing = [r["source_frame"] for r, p in zip(records, plain_records)
                 if not same_detections(r["detections"], p["detections"])]
    assert differing == []
    assert frame_count(video) == FRAMES
    assert stage_threads() == []


def test_max_frames_and_refused_frames(detector, clip, tmp_path):
    """Stops at exactly ``max_frames``; frames of the wrong shape are skipped, counted, not recorded."""
    class BadFrames(VideoCaptureSource):
        BAD = {2: "gray", 5: "float"}

        def __init__(self) -> None:
            super().__init__(str(clip), live=False, description="bad frames")
            self.n = 0

        def read(self):
            frame = super().read()
            kind = None if frame is None else self.BAD.get(self.n)
            self.n += frame is not None
            if kind == "gray":
                return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            if kind == "float":
                return frame.astype(np.float32) / 255
            return frame

    jsonl = tmp_path / "out.jsonl"
    stats = run_loop(detector, BadFrames(), max_frames=7, display=False, jsonl_out=jsonl, mode="throughput")
    assert stats.frames == 7 and stats.skipped == 2 and stats.stop_reason == "max_frames"
    assert [r["source_frame"] for r in read_jsonl(jsonl)] == [0, 1, 3, 4, 6, 7, 8]
    assert stage_threads() == []


def test_a_wrapped_detector_runs_whole_on_the_inference_thread(detector, clip, tmp_path):
    """A wrapper (here the live outputs' MeteredDetector) is not split: it runs whole, one call at a
    time, and the artifact that served each call is still recorded."""
    metered = MeteredDetector(detector)
    assert isinstance(stages_for(metered), CallStages) and isinstance(stages_for(detector), DetectorStages)
    plain_jsonl, jsonl = tmp_path / "plain.jsonl", tmp_path / "wrapped.jsonl"
    run_loop(detector, clip, max_frames=10, display=False, jsonl_out=plain_jsonl)
    stats = run_loop(metered, clip, max_frames=10, display=False, jsonl_out=jsonl, mode="throughput")
    records = read_jsonl(jsonl)
    assert stats.frames == 10 and [r["source_frame"] for r in records] == list(range(10))
    assert all(r["artifact"] == "lite0/onnxruntime-int8" for r in records)
    assert metered.calls >= 10  # at most a frame or two more were in flight when the limit was reached
    assert all(same_detections(r["detections"], p["detections"]) for r, p in zip(records, read_jsonl(plain_jsonl)))


def test_adaptive_serving_is_told_each_frames_own_work(onnx_exports, clip, tmp_path):
    """The latency the detector observes is the frame's prepare + inference + decode time (what the
    JSON line says), not its time in the queues."""
    exports, _ = onnx_exports

    class Recording(Detector):
        def observe(self, artifact, latency_ms):  # what adaptive serving is told
            self.seen.append((artifact.name, latency_ms))
            super().observe(artifact, latency_ms)

    recording = Recording(variant="lite0", precision="int8", models=exports, profile_cache=False, threads=1)
    recording.seen = []
    jsonl = tmp_path / "out.jsonl"
    stats = run_loop(recording, clip, max_frames=12, display=False, jsonl_out=jsonl, mode="throughput")
    records = read_jsonl(jsonl)
    assert stats.frames == 12 and len(recording.seen) == 12
    assert [name for name, _ in recording.seen] == [r["artifact"] for r in records]
    assert [round(ms, 3) for _, ms in recording.seen] == [r["latency_ms"] for r in records]
    assert all(ms > 0 for _, ms in recording.seen)


# ------------------------------------------------------------------------------------ ending cleanly


def test_stop_event_ends_it_with_every_taken_frame_recorded(detector, clip, tmp_path):
    stop = threading.Event()
    video, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    timer = threading.Timer(1.5, stop.set)
    timer.start()
    try:
        stats, error = in_thread(lambda: run_loop(detector, open_source(clip, loop_file=True), display=False,
                                                  video_out=video, jsonl_out=jsonl, stop_event=stop,
                                                  mode="throughput"))
    finally:
        timer.cancel()
    assert error is None, error
    assert stats.stop_reason == "stop_event" and stats.frames > 3
    records = read_jsonl(jsonl)
    assert [r["source_frame"] for r in records] == list(range(stats.frames))  # a file: nothing dropped
    assert frame_count(video) == stats.frames == len(records)
    assert not list(tmp_path.glob("*.part*")) and stage_threads() == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_ends_it_cleanly_and_restores_the_handler(detector, clip, tmp_path):
    seen = []

    def guard(sig, frame):  # only if run_loop did not take the signal
        seen.append(sig)

    previous = signal.signal(signal.SIGTERM, guard)
    video, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    backstop = threading.Event()  # ends the run (and fails the test) if the signal did not
    safety = threading.Timer(HANG_S, backstop.set)
    try:
        timer.start()
        safety.start()
        stats = run_loop(detector, open_source(clip, loop_file=True), display=False, video_out=video,
                         jsonl_out=jsonl, stop_event=backstop, mode="throughput")
        assert signal.getsignal(signal.SIGTERM) is guard
    finally:
        timer.cancel()
        safety.cancel()
        signal.signal(signal.SIGTERM, previous)
    assert seen == [] and stats.stop_reason == "SIGTERM" and stats.frames > 3
    assert frame_count(video) == stats.frames == len(read_jsonl(jsonl))
    assert stage_threads() == []


class DyingFile(VideoCaptureSource):
    """A real file capture that stops delivering after ``fail_after`` frames and cannot be opened again."""

    def __init__(self, path: Path, fail_after: int) -> None:
        super().__init__(str(path), live=False, description="dying camera")
        self.fail_after, self.reads, self.opens = fail_after, 0, 0

    def open(self) -> None:
        if self.opens:
            raise SourceError("device is gone")
        super().open()
        self.opens += 1

    def read(self):
        if self.reads >= self.fail_after:
            return None
        self.reads += 1
        return super().read()


def test_a_source_that_dies_mid_run_gives_its_error_after_the_frames_before_it(detector, clip, tmp_path):
    jsonl = tmp_path / "out.jsonl"
    _, error = in_thread(lambda: run_loop(detector, DyingFile(clip, fail_after=10), display=False,
                                          jsonl_out=jsonl, reader_options=FAST, mode="throughput"))
    assert isinstance(error, SourceError)
    assert str(error) == "dying camera: device is gone"
    assert [r["source_frame"] for r in read_jsonl(jsonl)] == list(range(10))  # none lost
    assert stage_threads() == []


def test_a_failing_detector_stops_the_loop_with_its_error(detector, clip, tmp_path):
    calls = []

    def breaks_at_six(frame):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("the runtime fell over")
        return detector(frame)

    jsonl, video = tmp_path / "out.jsonl", tmp_path / "out.avi"
    _, error = in_thread(lambda: run_loop(breaks_at_six, clip, display=False, jsonl_out=jsonl, video_out=video,
                                          mode="throughput"))
    assert isinstance(error, RuntimeError) and str(error) == "the runtime fell over"
    assert [r["source_frame"] for r in read_jsonl(jsonl)] == list(range(5))
    assert frame_count(video) == 5 and not list(tmp_path.glob("*.part*"))
    assert len(calls) == 6 and stage_threads() == []


def test_bad_mode_is_refused(detector, clip):
    with pytest.raises(ValueError, match="mode must be one of latency, throughput, got 'fast'"):
        run_loop(detector, clip, mode="fast")


def test_example_script_throughput_mode(onnx_exports, clip, tmp_path):
    exports, _ = onnx_exports
    jsonl = tmp_path / "out.jsonl"
    out = subprocess.run([sys.executable, str(SCRIPT), "--models", str(exports), "--variant", "lite0",
                          "--threads", "1", "--source", str(clip), "--no-display", "--mode", "throughput",
                          "--max-frames", "6", "--jsonl-out", str(jsonl)],
                         capture_output=True, text=True, timeout=HANG_S)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "throughput mode" in out.stdout
    records = read_jsonl(jsonl)
    assert [r["source_frame"] for r in records] == list(range(6)) and all("queue_ms" in r for r in records)
