"""The camera loop: :func:`run_loop` runs a detector on the newest frame of a source until told to
stop, recording what it sees. Its steps live in :class:`_Loop`; the parts it ties together
(reader, writers, overlay, window, signals, the throughput mode's stage threads) each have their
own module."""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from edgedet.detections import Detections
from edgedet.preprocess import InputError
from edgedet.video.overlay import overlay
from edgedet.video.pipelined import End, Failure, Job, StagePipeline, stages_for
from edgedet.video.reader import CapturedFrame, LatestFrameReader
from edgedet.video.signals import SignalStop
from edgedet.video.sources import FrameSource, SourceError
from edgedet.video.specs import open_source
from edgedet.video.stats import LoopMeter, LoopStats
from edgedet.video.window import Window, display_available
from edgedet.video.writers import JsonLinesWriter, VideoFileWriter

__all__ = ["run_loop"]

log = logging.getLogger(__name__)

#: What ``on_frame`` is called with: the frame, its detections, and where it came from.
OnFrame = Callable[[np.ndarray, Detections, CapturedFrame], Any]
#: ``run_loop``'s modes: one frame at a time, or frames overlapped on stage threads.
MODES = ("latency", "throughput")


def run_loop(detector: Callable[[np.ndarray], Detections], source: int | str | os.PathLike[str] | FrameSource, *,
             max_frames: int | None = None, classes: Sequence[int | str] | None = None,
             display: bool | str = "auto", video_out: str | os.PathLike[str] | VideoFileWriter | None = None,
             jsonl_out: str | os.PathLike[str] | JsonLinesWriter | None = None,
             stop_event: threading.Event | None = None, drop_frames: bool | None = None,
             video_fps: float | None = None, on_frame: OnFrame | None = None,
             reader_options: dict[str, Any] | None = None, log_interval_s: float = 30.0,
             window: str = "edgedet", mode: str = "latency") -> LoopStats:
    """Run ``detector`` on the newest frame of ``source`` until told to stop.

    Each iteration takes the newest frame (:class:`LatestFrameReader`), detects, keeps the
    ``classes`` asked for, and writes a JSON line, the annotated frame to the video and the
    window, then calls ``on_frame(frame, detections, captured_frame)``. A frame the detector
    refuses (wrong shape or dtype: :class:`~edgedet.preprocess.InputError`) is skipped with a
    warning and counted. The loop ends at ``max_frames`` processed frames, at the end of a file,
    when ``stop_event`` is set, on ``q``/Esc in the window, or on SIGINT/SIGTERM (handled only
    when called from the main thread; the previous handlers are restored after). The reader is
    stopped and the writers closed on every exit, exceptions included.

    ``mode="throughput"`` overlaps frames for more frames per second (:mod:`edgedet.video.pipelined`):
    preparing frame n+1 (letterbox, normalize) and decoding and recording frame n-1 run while
    frame n is in inference, each stage on its own thread, frames in order. Each result is then
    about one frame-time older than in the default ``"latency"`` mode, and on a device with few
    cores the stages compete with inference for them: measure both (``benchmarks/throughput.py``).
    A stop (signal, ``stop_event``, window) finishes the frames already taken from the source
    (at most three) before the loop ends; a second SIGINT stops at once. An
    :class:`edgedet.Detector` is split into its steps and adaptive serving is told each frame's
    own preprocess + inference + decode time; any other callable runs whole on the inference
    thread.

    Args:
        detector: an :class:`edgedet.Detector` (or any callable frame → :class:`Detections`).
        source: a :class:`FrameSource` or a spec for :func:`open_source`.
        max_frames: stop after this many processed frames (None: no limit).
        classes: class names or ids to keep (None: all).
        display: ``"auto"`` shows a window when there is a display and OpenCV has a GUI;
            ``True`` asks for one (falling back to headless with a log line); ``False`` never.
        video_out: a path (or :class:`VideoFileWriter`) for the annotated video.
        jsonl_out: a path (``"-"``: stdout) or :class:`JsonLinesWriter`; each line holds ``frame``
            (processed index), ``source_frame`` (capture index), ``timestamp`` (capture time,
            Unix seconds), ``latency_ms`` (the detector's), ``artifact`` (the artifact that served
            the frame, for an :class:`edgedet.Detector`: adaptive serving may change it), ``width``,
            ``height`` and ``detections`` (:meth:`Detections.to_json_records`); in throughput mode
            also ``queue_ms``, the time the frame waited between stages (``latency_ms`` stays
            its own work, so ``latency_ms + queue_ms`` is how long after it left the reader its
            detections were ready).
        stop_event: set it (from any thread) to end the loop after the current frame.
        drop_frames: keep only the newest frame (default: for live sources; files are processed
            frame by frame).
        video_fps: the recorded video's frame rate (default: the file's when every frame is
            processed; else the rate frames are processed, measured over the first ones).
        reader_options: more :class:`LatestFrameReader` arguments (``stall_timeout``, backoff...).
        log_interval_s: how often a progress line is logged.
        mode: ``"latency"`` (one frame at a time, the freshest results) or ``"throughput"``
            (stages overlapped, more frames per second).

    Raises:
        SourceError: the source could not be used at all (e.g. a file that does not decode).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    src = open_source(source)
    classes = _check_classes(detector, classes)
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    loop = _Loop(detector, src, max_frames=max_frames, classes=classes, window=_window(display, window),
                 video_out=video_out, jsonl_out=jsonl_out, stop_event=stop_event, drop_frames=drop_frames,
                 video_fps=video_fps, on_frame=on_frame, reader_options=reader_options,
                 log_interval_s=log_interval_s, mode=mode)
    stats = loop.run()
    log.info("camera loop: %s", stats.summary())
    return stats


class _Loop:
    """One run of :func:`run_loop`: what it opened, its counters, and its steps. Each step returns
    the reason to stop, or ``""`` to go on."""

    def __init__(self, detector: Callable[[np.ndarray], Detections], source: FrameSource, *,
                 max_frames: int | None, classes: list[int | str] | None, window: Window | None,
                 video_out: str | os.PathLike[str] | VideoFileWriter | None,
                 jsonl_out: str | os.PathLike[str] | JsonLinesWriter | None, stop_event: threading.Event | None,
                 drop_frames: bool | None, video_fps: float | None, on_frame: OnFrame | None,
                 reader_options: dict[str, Any] | None, log_interval_s: float, mode: str = "latency") -> None:
        self.detector, self.source = detector, source
        self.max_frames, self.classes, self.window = max_frames, classes, window
        self.stop_event, self.video_fps, self.on_frame = stop_event, video_fps, on_frame
        self.log_interval_s, self.mode = log_interval_s, mode
        self.signal_stop = threading.Event()
        self.reader = LatestFrameReader(source, drop_frames=drop_frames, **(reader_options or {}))
        self.stages: StagePipeline | None = None
        self.writer = (video_out if isinstance(video_out, VideoFileWriter) or video_out is None
                       else VideoFileWriter(video_out))
        self.jsonl = (jsonl_out if isinstance(jsonl_out, JsonLinesWriter) or jsonl_out is None
                      else JsonLinesWriter(jsonl_out))
        self.label = _label(detector)
        self.stats = LoopStats(mode=mode)
        self.meter = LoopMeter()
        self.queue_sum_ms = 0.0
        self.started = time.monotonic()
        self.next_log = self.started + log_interval_s
        self.warned_waiting = self.started

    def run(self) -> LoopStats:
        """Read, detect and write until a step gives a reason to stop; close everything on any exit."""
        reason = ""
        with SignalStop(self.signal_stop) as signals:
            try:
                self.reader.start()
                if self.mode == "throughput":
                    reason = self._run_stages(signals)
                while not reason:
                    reason = self._stop_requested(signals) or self._step()
            except BaseException:
                reason = reason or "error"
                raise
            finally:
                self._finish(reason)
        return self.stats

    def _stop_requested(self, signals: SignalStop) -> str:
        if self.max_frames is not None and self.stats.frames >= self.max_frames:
            return "max_frames"
        if self.signal_stop.is_set():
            return signals.received or "stopped"
        if self.stop_event is not None and self.stop_event.is_set():
            return "stop_event"
        return ""

    def _step(self) -> str:
        item = self.reader.get_frame(timeout=0.1)
        if item is None:
            return self._ended() or self._warn_if_quiet()
        return self._process(item)

    def _ended(self) -> str:
        """Why the source will give no more frames (raising if it failed), or ``""`` if it may."""
        reader = self.reader
        if not reader.finished:
            return ""
        if reader.eof:
            return "end of stream"
        if reader.error is not None:
            raise SourceError(f"{self.source.description}: {reader.error}") from reader.error
        return "source stopped"

    def _warn_if_quiet(self) -> str:
        """No frame came: the source is quiet (warn now and then; the reader reconnects)."""
        reader, now = self.reader, time.monotonic()
        quiet = now - (reader.last_frame_time or self.started)
        if quiet > reader.stall_timeout and now - self.warned_waiting > self.log_interval_s:
            log.warning("no frame from %s for %.0f s (reconnects so far: %d)",
                        self.source.description, quiet, reader.reconnects)
            self.warned_waiting = now
        return ""

    def _process(self, item: CapturedFrame) -> str:
        """Detect in one frame (latency mode), then record, show and hand it on."""
        t0 = time.perf_counter()
        try:
            detections = self.detector(item.image)
        except InputError as exc:
            self._skip(item, exc)
            return ""
        latency_ms = (time.perf_counter() - t0) * 1000.0
        # An adaptive Detector may change artifact between calls: record which one served this frame.
        served = getattr(self.detector, "last_served", None)
        artifact = served.artifact.name if served is not None else None
        return self._record(item, detections, latency_ms, artifact)

    def _run_stages(self, signals: SignalStop) -> str:
        """Throughput mode: frames come finished from the stage threads, in order; decode and record
        each here. A stop request stops the taking of new frames; those in flight are still
        recorded, until the stages' :class:`End` — but none beyond ``max_frames``, and none once the
        window was closed."""
        stages = self.stages = StagePipeline(stages_for(self.detector), self.reader, limit=self.max_frames,
                                             name="edgedet-loop").start()
        reason = ""
        keep_in_flight = True
        while True:
            if not reason:
                reason = self._stop_requested(signals)
                if reason:
                    stages.stop_taking()
                    keep_in_flight = reason != "max_frames"
            got = stages.get(timeout=0.1)
            if got is None:
                if not reason:
                    self._warn_if_quiet()
                continue
            if isinstance(got, Failure):
                raise got.error
            if isinstance(got, End):
                if reason:
                    return reason
                if got.why == "limit":
                    return "max_frames"
                return self._ended() or "stopped"
            if not keep_in_flight or (self.max_frames is not None and self.stats.frames >= self.max_frames):
                continue  # e.g. taken before the frame limit was known (a whole-call detector)
            step = self._finish_job(got)
            if step and not reason:
                reason, keep_in_flight = step, False  # the window was closed: show nothing more
                stages.stop_taking()

    def _finish_job(self, job: Job) -> str:
        """Decode a frame that came out of inference, then record it (or count it as skipped)."""
        assert self.stages is not None
        self.stages.decode(job)
        if job.skip is not None:
            self._skip(job.item, job.skip)
            return ""
        assert job.detections is not None
        queue_ms = max(0.0, (time.perf_counter() - job.taken) * 1000.0 - job.latency_ms)
        self.queue_sum_ms += queue_ms
        return self._record(job.item, job.detections, job.latency_ms, job.artifact, queue_ms)

    def _record(self, item: CapturedFrame, detections: Detections, latency_ms: float, artifact: str | None,
                queue_ms: float | None = None) -> str:
        """Count, write, draw and hand on one detected frame."""
        if self.classes is not None:
            detections = detections.filter(classes=self.classes)
        done = time.monotonic()
        self.meter.add(latency_ms, done)
        index = self.stats.frames
        self.stats.frames += 1
        if self.jsonl is not None:
            height, width = item.image.shape[:2]
            self.jsonl.write_frame(frame=index, source_frame=item.index, timestamp=item.timestamp,
                                   latency_ms=latency_ms, size=(width, height), detections=detections,
                                   artifact=artifact, queue_ms=queue_ms)
        reason = self._annotate(item.image, detections, latency_ms)
        if reason:
            return reason
        if self.on_frame is not None:
            self.on_frame(item.image, detections, item)
        self._log_progress(done)
        return ""

    def _skip(self, item: CapturedFrame, exc: InputError) -> None:
        self.stats.skipped += 1
        if self.stats.skipped <= 5 or self.stats.skipped % 100 == 0:
            log.warning("skipping frame %d from %s (%d skipped so far): %s",
                        item.index, self.source.description, self.stats.skipped, exc)

    def _annotate(self, image: np.ndarray, detections: Detections, latency_ms: float) -> str:
        """Draw once for the video and the window (only when one of them wants it)."""
        showing = self.window is not None and self.window.usable
        if self.writer is None and not showing:
            return ""
        annotated = overlay(image, detections, self.meter.fps, latency_ms, text=self.label)
        if self.writer is not None:
            if self.writer.frames == 0 and self.writer.fps is None:
                self.writer.fps = self.video_fps or _video_fps(self.source, self.reader)
            self.writer.write(annotated)
        if showing:
            assert self.window is not None
            return self.window.show(annotated) or ""
        return ""

    def _log_progress(self, done: float) -> None:
        if done < self.next_log:
            return
        self.next_log = done + self.log_interval_s
        log.info("%d frames, %.1f FPS, latency p90 %.1f ms; dropped %d, skipped %d, reconnects %d",
                 self.stats.frames, self.meter.fps or 0.0, self.meter.p90(), self.reader.dropped,
                 self.stats.skipped, self.reader.reconnects)

    def _finish(self, reason: str) -> None:
        """Stop the stage threads and the reader, close the outputs (the video even if the JSON
        lines fail, and so on), and fill in the figures."""
        stats, reader = self.stats, self.reader
        if self.stages is not None:
            self.stages.close()
        reader.stop()
        try:
            if self.writer is not None:
                path = self.writer.close()
                stats.video_path = None if path is None else str(path)
        finally:
            if self.jsonl is not None:
                self.jsonl.close()
                stats.jsonl_path = None if self.jsonl.path is None else str(self.jsonl.path)
            if self.window is not None:
                self.window.close()
        stats.duration_s = time.monotonic() - self.started
        stats.captured, stats.dropped, stats.reconnects = reader.captured, reader.dropped, reader.reconnects
        if self.meter.latencies:
            stats.mean_latency_ms = self.meter.latency_sum / stats.frames
            stats.p90_latency_ms = self.meter.p90()
            if self.mode == "throughput":
                stats.mean_queue_ms = self.queue_sum_ms / stats.frames
        stats.fps = stats.frames / stats.duration_s if stats.duration_s > 0 else 0.0
        stats.stop_reason = reason


def _window(display: bool | str, name: str) -> Window | None:
    """The window to show frames in, or None: headless (with a log line saying why)."""
    if not display:
        return None
    ok, why = display_available()
    if ok:
        return Window(name)
    (log.warning if display is True else log.info)("running headless: %s", why)
    return None


def _check_classes(detector: Any, classes: Sequence[int | str] | None) -> list[int | str] | None:
    if classes is None:
        return None
    classes = [classes] if isinstance(classes, (int, str)) else list(classes)
    labels = getattr(detector, "labels", None)
    names = [c for c in classes if isinstance(c, str)]
    if names and labels:
        unknown = [c for c in names if c not in labels]
        if unknown:
            raise ValueError(f"unknown class name(s) {unknown}; this model knows: {', '.join(labels)}")
    return classes


def _label(detector: Any) -> str | None:
    parts = [getattr(detector, attr, None) for attr in ("variant", "precision")]
    parts = [p for p in parts if isinstance(p, str)]
    return " ".join(parts) or None



def _video_fps(source: FrameSource, reader: LatestFrameReader) -> float | None:
    """The recorded video's frame rate when none was given: the file's when every frame is
    processed; else None: the writer measures the rate frames are processed."""
    return source.fps if not reader.drop_frames and source.fps else None

