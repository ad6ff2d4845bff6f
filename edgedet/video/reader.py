"""The threaded reader: capture on its own thread, keep only the newest frame, reopen what fails."""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Iterator, NamedTuple

import numpy as np

from edgedet.video.sources import FrameSource, SourceError
from edgedet.video.specs import open_source

__all__ = ["CapturedFrame", "LatestFrameReader", "iter_frames"]

log = logging.getLogger(__name__)


class CapturedFrame(NamedTuple):
    """A frame and where it came from."""

    image: np.ndarray
    index: int  #: 0-based position among all frames captured by the reader (across reconnects)
    timestamp: float  #: ``time.time()`` when it was captured


class LatestFrameReader:
    """Capture from a :class:`FrameSource` on a thread, keeping only the newest frame.

    ``get()`` returns the newest frame not yet returned; when the consumer is slower than the
    source, the frames it had no time for are dropped (counted in :attr:`dropped`). With
    ``drop_frames=False`` (the default for files) the capture thread waits for the consumer
    instead, so every frame is processed.

    The capture thread owns the source: it opens it, reads it and releases it. When the source
    fails to open (a live one), returns no frame ``max_failures`` times in a row, or delivers
    nothing for ``stall_timeout`` seconds, it is released and reopened after a wait that doubles
    from ``backoff_initial`` up to ``backoff_max`` (reset by the next frame), with a log line each
    time. A file's end is the end (:attr:`eof`) unless ``reconnect_on_eof``; a file that cannot be
    opened is an error (:attr:`error`), not retried.

    A read that blocks inside the driver cannot be interrupted from Python: network streams get
    FFmpeg read timeouts from :func:`open_source`, and ``stop()`` leaves a thread still blocked
    after ``timeout`` behind (a daemon thread) with a warning.

    Counters (read them any time): ``captured``, ``delivered``, ``dropped``, ``failures`` (times
    the source was found failing), ``reconnects`` (successful reopenings after a failure),
    ``open_attempts``.
    """

    def __init__(self, source: FrameSource, *, drop_frames: bool | None = None, stall_timeout: float = 5.0,
                 max_failures: int = 5, backoff_initial: float = 0.5, backoff_max: float = 10.0,
                 reconnect_on_eof: bool = False) -> None:
        if stall_timeout <= 0 or max_failures < 1 or backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need stall_timeout > 0, max_failures >= 1 and 0 < backoff_initial <= backoff_max")
        self.source = source
        self.drop_frames = source.live if drop_frames is None else bool(drop_frames)
        self.stall_timeout, self.max_failures = float(stall_timeout), int(max_failures)
        self.backoff_initial, self.backoff_max = float(backoff_initial), float(backoff_max)
        self.reconnect_on_eof = reconnect_on_eof
        self.captured = self.delivered = self.dropped = 0
        self.failures = self.reconnects = self.open_attempts = 0
        self.eof = False
        self.error: BaseException | None = None
        self.last_frame_time: float | None = None  # time.monotonic() of the newest capture
        self._cond = threading.Condition()
        self._latest: CapturedFrame | None = None
        self._stop = threading.Event()
        self._done = False
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> LatestFrameReader:
        if self._thread is not None:
            raise RuntimeError("a LatestFrameReader starts once; make a new one to read again")
        self._thread = threading.Thread(target=self._run, name=f"edgedet-capture({self.source.description})",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop capturing, join the thread (up to ``timeout`` s) and so release the source."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s: the capture thread is still blocked in a read after %.1f s; leaving it behind "
                            "(it releases the source when the read returns)", self.source.description, timeout)

    def __enter__(self) -> LatestFrameReader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def finished(self) -> bool:
        """Capture has ended (end of file, error or stop) and every captured frame was taken."""
        with self._cond:
            return self._done and self._latest is None

    # -- consumer --------------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> np.ndarray | None:
        """The newest frame not yet returned; ``None`` after ``timeout`` s or once capture ended."""
        item = self.get_frame(timeout)
        return None if item is None else item.image

    def get_frame(self, timeout: float | None = None) -> CapturedFrame | None:
        """Like :meth:`get`, with the frame's capture index and timestamp."""
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None or self._done, timeout)
            item, self._latest = self._latest, None
            if item is not None:
                self.delivered += 1
                self._cond.notify_all()  # a non-dropping capture thread waits for the slot
            return item

    # -- capture thread --------------------------------------------------------------------------

    def _publish(self, frame: np.ndarray) -> None:
        with self._cond:
            if not self.drop_frames:
                while self._latest is not None and not self._stop.is_set():
                    self._cond.wait(0.1)
                if self._stop.is_set():
                    return
            if self._latest is not None:
                self.dropped += 1
            self._latest = CapturedFrame(frame, self.captured, time.time())
            self.captured += 1
            self.last_frame_time = time.monotonic()
            self._cond.notify_all()

    def _release(self) -> None:
        try:
            self.source.release()
        except Exception as exc:  # a release that fails must not stop the reconnects
            log.warning("%s: release failed: %s", self.source.description, exc)

    def _run(self) -> None:
        desc = self.source.description
        backoff = self.backoff_initial
        is_open = failed_before = False
        in_a_row = 0
        last_good = time.monotonic()
        try:
            while not self._stop.is_set():
                if not is_open:
                    self.open_attempts += 1
                    try:
                        self.source.open()
                    except Exception as exc:
                        if self.source.finite and not self.reconnect_on_eof:
                            raise  # a file that cannot be opened will not open by waiting
                        self._release()
                        failed_before = True
                        log.warning("%s: cannot open (%s); retrying in %.3g s", desc, exc, backoff)
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, self.backoff_max)
                        continue
                    is_open, in_a_row, last_good = True, 0, time.monotonic()
                    if failed_before:
                        self.reconnects += 1
                        log.info("%s: reopened (reconnect %d)", desc, self.reconnects)
                    else:
                        log.info("%s: opened%s", desc, f" ({self.source.fps:g} fps)" if self.source.fps else "")
                try:
                    frame = self.source.read()
                except Exception as exc:
                    log.warning("%s: read failed: %s", desc, exc)
                    frame = None
                now = time.monotonic()
                if frame is not None:
                    self._publish(frame)
                    in_a_row, last_good, backoff = 0, now, self.backoff_initial
                    continue
                if self.source.eof and not self.reconnect_on_eof:
                    self.eof = True
                    log.info("%s: end of stream after %d frames", desc, self.captured)
                    break
                in_a_row += 1
                if self.source.eof or in_a_row >= self.max_failures or now - last_good >= self.stall_timeout:
                    why = ("end of stream" if self.source.eof else
                           f"no frame for {now - last_good:.1f} s" if now - last_good >= self.stall_timeout
                           else f"{in_a_row} failed reads in a row")
                    self.failures += 1
                    failed_before = True
                    log.warning("%s: stopped delivering (%s); releasing it and reopening in %.3g s",
                                desc, why, backoff)
                    self._release()
                    is_open = False
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                else:
                    self._stop.wait(min(0.01 * in_a_row, 0.1))  # a brief pause before trying again
        except BaseException as exc:
            self.error = exc
            log.error("%s: capture stopped: %s", desc, exc)
        finally:
            self._release()
            with self._cond:
                self._done = True
                self._cond.notify_all()



def iter_frames(source: int | str | os.PathLike[str] | FrameSource, **reader_options: Any) -> Iterator[np.ndarray]:
    """The newest frames of ``source``, one per ``next()``, until it ends (a file) or the loop breaks.

    For custom loops: ``for frame in iter_frames("picamera"): detections = detector(frame)``.
    """
    with LatestFrameReader(open_source(source), **reader_options) as reader:
        while True:
            frame = reader.get(timeout=0.5)
            if frame is None:
                if reader.finished:
                    if reader.error is not None:
                        raise SourceError(f"{reader.source.description}: {reader.error}") from reader.error
                    return
                continue
            yield frame
