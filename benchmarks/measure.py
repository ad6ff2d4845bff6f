"""Timing one artifact or one live PyTorch model: the frames, the loops, the latencies.

Two figures per row, timed in one interleaved loop (a model-only call, then an end-to-end call
per round: both see the same load on a shared machine), after untimed warm-up rounds and with
Python's garbage collector paused during the loop (it runs between rows instead):

* **model-only**: ``backend.run(batch)`` on batches preprocessed beforehand from the frames
  (torch: :class:`~edgedet.backends.torch.TorchBackend` around the live model, ``model(x)``
  under ``torch.inference_mode`` with the numpy ↔ tensor copies at its edges, as every backend);
* **end-to-end**: what :class:`edgedet.Detector` does per frame: preprocess (letterbox, normalize)
  + run + decode + NMS + mapping boxes to the frame, via :class:`edgedet.pipeline.Pipeline`
  (torch: the same Pipeline around the live model, :meth:`TorchBackend.from_module`).

Inside every end-to-end call the pipeline's three stages are timed where they run
(:class:`StageTimer`): ``pre`` (``Pipeline.prepare``: whatever the artifact needs, a full
letterbox + normalize, or only the letterbox for an artifact that normalizes in its graph),
``infer`` (``backend.run``) and ``decode`` (``Pipeline.decode``: dequantize, decode, NMS, boxes to
the frame); ``residual`` is the end-to-end time outside the three (frame validation, the
detector's bookkeeping, the timer itself), so the four add up to the end-to-end time per frame.

Every backend sees the same frames: :func:`bench_frames` makes a few deterministic synthetic
camera scenes of the requested size, and every loop cycles through them in the same order.
"""
from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgedet.detector import Artifact, Detector
from edgedet.pipeline import Pipeline
from edgedet.profiling import LatencyStats

__all__ = ["RESIDUAL", "STAGES", "StageTimer", "Timing", "bench_frames", "gc_paused", "load_detector", "torch_pipeline",
           "time_detector", "time_pair", "time_pipeline"]

log = logging.getLogger(__name__)

FRAME_SEED = 20_241_121
FRAME_COUNT = 4
#: The stages of one end-to-end call, in the order they run, and what they time:
#: ``Pipeline.prepare``, ``backend.run``, ``Pipeline.decode``.
STAGES: tuple[str, ...] = ("pre", "infer", "decode")
#: The end-to-end time outside the three stages (validation, bookkeeping, glue).
RESIDUAL = "residual"


def bench_frames(frame_size: tuple[int, int], count: int = FRAME_COUNT) -> list[np.ndarray]:
    """``count`` deterministic synthetic BGR scenes of ``frame_size`` (width, height)."""
    from converters.calibration import synthetic_frame

    return [synthetic_frame(FRAME_SEED, i, size=frame_size) for i in range(count)]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (as :mod:`timeit` does) for a timed loop."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_ABSENT = object()


class StageTimer:
    """Times a :class:`~edgedet.pipeline.Pipeline`'s stages inside the calls that go through it.

    While :meth:`installed`, ``pipeline.prepare``, ``pipeline.backend.run`` and
    ``pipeline.decode`` are wrapped on those two objects only (no class or module changes), so
    what is timed is whatever the stages do for this artifact. The wrappers record only between
    :meth:`start` and :meth:`stop`, i.e. during an end-to-end call; the round's model-only call
    passes through unrecorded. A stage that does not run during a recorded call, or that runs
    inside another stage, is an error: the figures would not add up to the end-to-end time.
    """

    def __init__(self, pipeline: Pipeline, clock: Callable[[], float] = time.perf_counter) -> None:
        self._pipeline, self._clock = pipeline, clock
        self._seconds: list[float] | None = None  # per stage, during a recorded call
        self._calls = [0] * len(STAGES)
        self._inside: str | None = None

    def _targets(self) -> list[tuple[Any, str]]:
        return [(self._pipeline, "prepare"), (self._pipeline.backend, "run"), (self._pipeline, "decode")]

    def _wrap(self, index: int, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock, stage = self._clock, STAGES[index]

        def timed(*args: Any, **kwargs: Any) -> Any:
            seconds = self._seconds
            if seconds is None:
                return fn(*args, **kwargs)
            if self._inside is not None:
                raise RuntimeError(f"stage timing: {stage} ran inside {self._inside}; the pipeline's call "
                                   f"path changed, update benchmarks/measure.py:StageTimer")
            self._inside = stage
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[index] += clock() - t0
                self._calls[index] += 1
                self._inside = None

        return timed

    @contextmanager
    def installed(self) -> Iterator[StageTimer]:
        """Wrap the stages for the duration of the block (the objects are restored after it)."""
        saved = []
        try:
            for index, (obj, name) in enumerate(self._targets()):
                saved.append((obj, name, vars(obj).get(name, _ABSENT)))
                setattr(obj, name, self._wrap(index, getattr(obj, name)))
            yield self
        finally:
            for obj, name, before in reversed(saved):
                if before is _ABSENT:
                    delattr(obj, name)
                else:
                    setattr(obj, name, before)

    def start(self) -> None:
        """Record the stages of the call that follows."""
        self._seconds, self._calls = [0.0] * len(STAGES), [0] * len(STAGES)

    def stop(self) -> list[float]:
        """Stop recording; the seconds each stage took during the call (in :data:`STAGES` order)."""
        seconds, self._seconds = self._seconds, None
        missing = [stage for stage, n in zip(STAGES, self._calls) if n == 0]
        if seconds is None or missing:
            raise RuntimeError(f"stage timing: the end-to-end call did not run {', '.join(missing) or 'at all'}; "
                               f"the pipeline's call path changed, update benchmarks/measure.py:StageTimer")
        return seconds


@dataclass(frozen=True)
class Timing:
    """Model-only and end-to-end latency of one row, and (where timed) the end-to-end call's stages:
    ``{"pre", "infer", "decode", "residual"}`` (see the module doc), each over the same frames."""

    model: LatencyStats
    e2e: LatencyStats
    stages: dict[str, LatencyStats] | None = None


def time_pair(model_call: Callable[[int], Any], e2e_call: Callable[[int], Any], *, warmup: int, runs: int,
              max_seconds: float | None = None, clock: Callable[[], float] = time.perf_counter,
              stages: StageTimer | None = None) -> Timing:
    """Model-only and end-to-end latency, interleaved: each round times one model-only call, then
    one end-to-end call on the same frame, so that load from other processes, which comes and
    goes, hits the figures alike (two loops one after the other gave a model-only p50 above the
    end-to-end p50 on a busy machine). With ``stages`` (installed), the end-to-end call's stages
    are recorded too. ``warmup`` untimed rounds first; ``max_seconds`` stops after at least 3 rounds."""
    gc.collect()
    for i in range(warmup):
        model_call(i)
        e2e_call(i)
    model_ms: list[float] = []
    e2e_ms: list[float] = []
    parts: list[list[float]] = []  # per round: pre, infer, decode, residual (ms)
    with gc_paused():
        started = clock()
        for i in range(runs):
            t0 = clock()
            model_call(i)
            model_ms.append((clock() - t0) * 1000.0)
            if stages is not None:
                stages.start()
            t0 = clock()
            e2e_call(i)
            total = (clock() - t0) * 1000.0
            e2e_ms.append(total)
            if stages is not None:
                each = [s * 1000.0 for s in stages.stop()]
                parts.append([*each, max(0.0, total - sum(each))])
            if max_seconds is not None and len(model_ms) >= 3 and clock() - started > max_seconds:
                break
    stage_stats = None
    if stages is not None:
        columns = zip(*parts)
        stage_stats = {name: LatencyStats.from_samples(list(col)) for name, col in zip((*STAGES, RESIDUAL), columns)}
    return Timing(LatencyStats.from_samples(model_ms), LatencyStats.from_samples(e2e_ms), stage_stats)


# ------------------------------------------------------------------------------------ artifacts


def load_detector(artifact: Artifact, *, device: str, threads: int) -> Detector:
    """Load exactly ``artifact`` as :class:`edgedet.Detector` serves it (file hashes checked,
    runtime options as the detector sets them), with ``threads`` inference threads on ``device``."""
    m = artifact.manifest
    return Detector(variant=m.variant, models=artifact.directory, backend=m.backend, precision=m.precision,
                    threads=threads, device=device, profile_cache=False)


def time_detector(detector: Detector, frames: Sequence[np.ndarray], *, warmup: int, runs: int,
                  max_seconds: float | None = None) -> Timing:
    """:func:`time_pipeline` of the detector's pipeline, end to end as the detector serves a frame
    (``detector(frame)``; a fixed-batch artifact: a full batch per call, latency per call)."""
    batch_size = detector.artifact.manifest.input.batch_size
    if batch_size == 1:
        def e2e(frame: np.ndarray) -> Any:
            return detector(frame)
    else:
        def e2e(frame: np.ndarray) -> Any:
            return detector.detect_batch([frame] * batch_size)
    return time_pipeline(detector.pipeline, frames, warmup=warmup, runs=runs, max_seconds=max_seconds, e2e=e2e)


def time_pipeline(pipeline: Pipeline, frames: Sequence[np.ndarray], *, warmup: int, runs: int,
                  max_seconds: float | None = None, e2e: Callable[[np.ndarray], Any] | None = None) -> Timing:
    """Model-only (``backend.run`` on batches preprocessed beforehand) and end-to-end (``e2e(frame)``,
    default: the pipeline on one frame) latency, interleaved (:func:`time_pair`), with the
    pipeline's stages timed inside each end-to-end call (:class:`StageTimer`)."""
    batch_size = pipeline.manifest.input.batch_size
    batches = [pipeline.prepare([f] * batch_size)[0] for f in frames]
    run = pipeline.backend.run  # bound before the stages are wrapped: model-only is not a stage
    if e2e is None:
        def e2e(frame: np.ndarray) -> Any:
            return pipeline([frame])
    timer = StageTimer(pipeline)
    with timer.installed():
        return time_pair(lambda i: run(batches[i % len(batches)]), lambda i: e2e(frames[i % len(frames)]),
                         warmup=warmup, runs=runs, max_seconds=max_seconds, stages=timer)


# ------------------------------------------------------------------------------------ PyTorch


def torch_pipeline(model: Any, *, device: str = "cpu", weights: Any = None) -> Pipeline:
    """The live PyTorch ``model`` (moved to ``device``, in eval mode) in the runtime's own
    :class:`~edgedet.pipeline.Pipeline`: the eager reference row of the table. ``weights``: the
    manifest's :class:`~edgedet.manifest.WeightsInfo`, where the caller knows it."""
    from edgedet.backends.torch import TorchBackend

    backend = TorchBackend.from_module(model.to(device).eval(), device=device)
    return Pipeline(backend.manifest(weights=weights), backend)
