"""The throughput mode's stages: a frame's preparation, inference and decoding on threads of their own,
so that capture and preparation of frame n+1 and decoding and outputs of frame n-1 overlap the
inference of frame n.

::

    capture thread      prepare thread            inference thread      the loop's thread
    (LatestFrameReader) ─► validate + letterbox ─► backend.run      ─► decode + NMS, JSON line, video,
                           + normalize                                  window, on_frame

Each stage hands its frame to the next through a :class:`Channel` of depth 1, so frames stay in order
and at most one frame waits between two stages. The prepare stage takes a frame from the reader only
once the inference stage has taken the previous one, so that a live camera's frame is as fresh as
it can be when inference starts (frames the loop has no time for are still dropped by the reader).

An :class:`edgedet.Detector` (or any object whose class has ``serving`` and ``observe``) is split into
its steps (:class:`DetectorStages`); adaptive serving is told each frame's own preprocess +
inference + decode time (:meth:`edgedet.Detector.observe`), not the time it waited between stages.
Any other callable (a wrapper such as the tracker's) runs whole on the inference thread
(:class:`CallStages`): capture, drawing, recording and the ``on_frame`` hooks still overlap it.

onnxruntime, OpenVINO and LiteRT release the GIL while they run, so the other stages do run during
inference.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edgedet.detections import Detections
from edgedet.preprocess import InputError, validate_frame
from edgedet.video.reader import CapturedFrame, LatestFrameReader

__all__ = ["CallStages", "Channel", "DetectorStages", "End", "Failure", "Job", "StagePipeline", "stages_for"]

log = logging.getLogger(__name__)

#: Frames waiting between two stages. One is enough: each stage thread holds a frame of its own, so
#: three frames are worked on at once; a deeper queue would only make results older.
QUEUE_DEPTH = 1
#: How long :meth:`StagePipeline.close` waits for a stage thread (one inference) before leaving it.
JOIN_TIMEOUT_S = 10.0


@dataclass
class Job:
    """One frame on its way through the stages."""

    item: CapturedFrame
    taken: float  #: ``time.perf_counter()`` when the prepare stage took it from the reader
    prepare_ms: float = 0.0
    infer_ms: float = 0.0
    decode_ms: float = 0.0
    skip: InputError | None = None  #: the detector refused the frame (wrong shape or dtype)
    artifact: str | None = None  #: the artifact that served it (an :class:`edgedet.Detector`'s)
    detections: Detections | None = None
    state: dict[str, Any] = field(default_factory=dict)  #: what one stage leaves for the next

    @property
    def latency_ms(self) -> float:
        """The frame's own work: preprocess + inference + decode (what the plain loop times)."""
        return self.prepare_ms + self.infer_ms + self.decode_ms


@dataclass(frozen=True)
class End:
    """The last item of a stage pipeline: why the prepare stage stopped taking frames."""

    why: str  #: ``"source"`` (the reader finished), ``"limit"`` (``max_frames`` taken) or ``"stopped"``


@dataclass(frozen=True)
class Failure:
    """A stage failed (not a refused frame): the loop raises ``error`` after the frames before it."""

    error: BaseException
    stage: str


class Channel:
    """A bounded hand-off between two stage threads; :meth:`close` wakes and releases every waiter."""

    def __init__(self, depth: int = QUEUE_DEPTH) -> None:
        self.depth = depth
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self.closed = False

    def wait_room(self, timeout: float) -> bool:
        """Wait until an item could be put without waiting; False after ``timeout`` s or once closed."""
        with self._cond:
            return self._cond.wait_for(lambda: self.closed or len(self._items) < self.depth, timeout) \
                and not self.closed

    def put(self, item: Any, *, always: bool = False) -> bool:
        """Put ``item`` once there is room (``always``: at once, e.g. the end marker); False if closed."""
        with self._cond:
            if not always:
                self._cond.wait_for(lambda: self.closed or len(self._items) < self.depth)
            if self.closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Any:
        """The oldest item; ``None`` after ``timeout`` s, or once closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.closed or self._items, timeout) or self.closed:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._items.clear()
            self._cond.notify_all()


class DetectorStages:
    """An :class:`edgedet.Detector` split into its steps: validate + ``Pipeline.prepare``,
    ``backend.run``, ``Pipeline.decode``. A frame stays on the pipeline it was prepared with (a
    switch of artifact takes effect at the next frame); each frame's latency is reported back with
    ``detector.observe``."""

    #: Frames are validated in the prepare stage: a refused frame never reaches inference.
    validates_early = True

    def __init__(self, detector: Any) -> None:
        self.detector = detector

    def prepare(self, job: Job) -> None:
        artifact, pipeline = self.detector.serving
        batch, letterboxes = pipeline.prepare([validate_frame(job.item.image)])
        job.state.update(artifact=artifact, pipeline=pipeline, batch=batch, letterboxes=letterboxes)
        job.artifact = artifact.name

    def infer(self, job: Job) -> None:
        job.state["outputs"] = job.state["pipeline"].backend.run(job.state.pop("batch"))

    def decode(self, job: Job) -> None:
        state = job.state
        job.detections = state["pipeline"].decode(state.pop("outputs"), state["letterboxes"])[0]

    def done(self, job: Job) -> None:
        self.detector.observe(job.state["artifact"], job.latency_ms)


class CallStages:
    """Any callable detector (a wrapper, your own function): the whole call is the inference stage,
    so that calls stay one at a time and in order (a tracker needs both)."""

    validates_early = False

    def __init__(self, detector: Callable[[np.ndarray], Detections]) -> None:
        self.detector = detector

    def prepare(self, job: Job) -> None:
        pass

    def infer(self, job: Job) -> None:
        job.detections = self.detector(job.item.image)
        # An adaptive Detector behind a wrapper records what served the call, per thread: read it here.
        served = getattr(self.detector, "last_served", None)
        job.artifact = served.artifact.name if served is not None else None

    def decode(self, job: Job) -> None:
        pass

    def done(self, job: Job) -> None:
        pass


def stages_for(detector: Any) -> DetectorStages | CallStages:
    """How ``detector`` splits into stages: by its steps when its class offers ``serving`` and
    ``observe`` (an :class:`edgedet.Detector`), else as one call. Attributes a wrapper passes through
    with ``__getattr__`` do not count: its own work would be skipped."""
    cls = type(detector)
    if callable(getattr(cls, "observe", None)) and isinstance(getattr(cls, "serving", None), property):
        return DetectorStages(detector)
    return CallStages(detector)


class StagePipeline:
    """The prepare and inference threads between a :class:`LatestFrameReader` and the loop's thread,
    which takes finished frames with :meth:`get` (in capture order) and decodes them with
    :meth:`decode`.

    Args:
        stages: what each stage does (:func:`stages_for`).
        reader: the started reader frames come from.
        limit: take at most this many frames the detector accepts (``max_frames``; only where
            frames are validated before inference).
    """

    def __init__(self, stages: DetectorStages | CallStages, reader: LatestFrameReader, *,
                 limit: int | None = None, name: str = "edgedet") -> None:
        self.stages, self.reader = stages, reader
        self.limit = limit if stages.validates_early else None
        self.accepted = 0
        self._prepared = Channel()
        self._finished = Channel()
        self._stop_taking = threading.Event()
        self._threads = [threading.Thread(target=self._prepare_loop, name=f"{name}-prepare", daemon=True),
                         threading.Thread(target=self._infer_loop, name=f"{name}-infer", daemon=True)]

    def start(self) -> StagePipeline:
        for thread in self._threads:
            thread.start()
        return self

    def stop_taking(self) -> None:
        """Take no new frame from the reader; the frames already taken still come out, then :class:`End`."""
        self._stop_taking.set()

    def get(self, timeout: float) -> Job | End | Failure | None:
        """The next finished frame (inference done, not yet decoded), an :class:`End`, a
        :class:`Failure`, or ``None`` after ``timeout`` s."""
        return self._finished.get(timeout)

    def decode(self, job: Job) -> None:
        """Decode ``job`` on the calling thread and report its latency (skipped frames: nothing)."""
        if job.skip is not None:
            return
        t0 = time.perf_counter()
        self.stages.decode(job)
        job.decode_ms = (time.perf_counter() - t0) * 1000.0
        self.stages.done(job)

    def close(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Stop both threads and join them (each finishes at most the call it is in)."""
        self._stop_taking.set()
        self._prepared.close()
        self._finished.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.ident is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning("%s is still in a call after %.1f s; leaving it behind", thread.name, timeout)

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    # -- the stage threads -------------------------------------------------------------------------

    def _prepare_loop(self) -> None:
        why = "stopped"
        try:
            while not self._stop_taking.is_set():
                if self.limit is not None and self.accepted >= self.limit:
                    why = "limit"
                    break
                # The next frame is taken only once inference took the last one: the freshest frame.
                if not self._prepared.wait_room(timeout=0.1):
                    if self._prepared.closed:
                        return
                    continue
                item = self.reader.get_frame(timeout=0.1)
                if item is None:
                    if self.reader.finished:
                        why = "source"
                        break
                    continue
                job = Job(item, time.perf_counter())
                try:
                    self.stages.prepare(job)
                except InputError as exc:
                    job.skip = exc
                else:
                    self.accepted += 1
                job.prepare_ms = (time.perf_counter() - job.taken) * 1000.0
                self._prepared.put(job)
        except BaseException as exc:
            self._prepared.put(Failure(exc, "prepare"), always=True)
        finally:
            self._prepared.put(End(why), always=True)

    def _infer_loop(self) -> None:
        failed = False
        while True:
            job = self._prepared.get()
            if job is None:  # closed
                return
            if isinstance(job, Job):
                if failed:
                    continue  # after a failure only the End still goes through
                if job.skip is None:
                    t0 = time.perf_counter()
                    try:
                        self.stages.infer(job)
                    except InputError as exc:  # a whole-call detector refused the frame
                        job.skip = exc
                    except BaseException as exc:
                        failed = True
                        self._stop_taking.set()
                        self._finished.put(Failure(exc, "inference"), always=True)
                        continue
                    job.infer_ms = (time.perf_counter() - t0) * 1000.0
            self._finished.put(job, always=not isinstance(job, Job))
            if isinstance(job, End):
                return
