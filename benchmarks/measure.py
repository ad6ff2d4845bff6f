"""Timing one artifact or one live PyTorch model: the frames, the loops, the latencies.

Three figures per row, timed in one interleaved loop (a model-only call, an end-to-end call, then
a post-processing call per round: all see the same load on a shared machine), after untimed
warm-up rounds and with Python's garbage collector paused during the loop (it runs between rows
instead):

* **model-only**: ``backend.run(batch)`` on batches preprocessed beforehand from the frames
  (torch: :class:`~edgedet.backends.torch.TorchBackend` around the live model, ``model(x)``
  under ``torch.inference_mode`` with the numpy ↔ tensor copies at its edges, as every backend);
* **end-to-end**: what :class:`edgedet.Detector` does per frame: preprocess (letterbox, normalize)
  + run + decode + NMS + mapping boxes to the frame, via :class:`edgedet.pipeline.Pipeline`
  (torch: the same Pipeline around the live model, :meth:`TorchBackend.from_module`);
* **post-processing**: decode + NMS + mapping boxes, on the model outputs of the same frame
  (computed beforehand): its share of the end-to-end latency is what the hot path adds.

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

__all__ = ["Timing", "bench_frames", "gc_paused", "load_detector", "torch_pipeline", "time_detector",
           "time_pair", "time_pipeline"]

log = logging.getLogger(__name__)

FRAME_SEED = 20_241_121
FRAME_COUNT = 4


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


@dataclass(frozen=True)
class Timing:
    """Model-only, end-to-end and (where timed) post-processing latency of one row."""

    model: LatencyStats
    e2e: LatencyStats
    post: LatencyStats | None = None


def time_pair(model_call: Callable[[int], Any], e2e_call: Callable[[int], Any], *, warmup: int, runs: int,
              max_seconds: float | None = None, clock: Callable[[], float] = time.perf_counter,
              post_call: Callable[[int], Any] | None = None) -> Timing:
    """Model-only and end-to-end latency (and post-processing, given ``post_call``), interleaved:
    each round times one model-only call, then one end-to-end call on the same frame, so that
    load from other processes, which comes and goes, hits the figures alike (two loops one after
    the other gave a model-only p50 above the end-to-end p50 on a busy machine). ``warmup``
    untimed rounds first; ``max_seconds`` stops after at least 3 rounds."""
    gc.collect()
    calls = [model_call, e2e_call] + ([post_call] if post_call is not None else [])
    for i in range(warmup):
        for call in calls:
            call(i)
    samples: list[list[float]] = [[] for _ in calls]
    with gc_paused():
        started = clock()
        for i in range(runs):
            for call, times in zip(calls, samples):
                t0 = clock()
                call(i)
                times.append((clock() - t0) * 1000.0)
            if max_seconds is not None and len(samples[0]) >= 3 and clock() - started > max_seconds:
                break
    stats = [LatencyStats.from_samples(times) for times in samples]
    return Timing(stats[0], stats[1], stats[2] if post_call is not None else None)


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
    """Model-only (``backend.run`` on batches preprocessed beforehand), end-to-end (``e2e(frame)``,
    default: the pipeline on one frame) and post-processing (``pipeline.decode`` on the outputs of
    the same frames), interleaved (:func:`time_pair`)."""
    batch_size = pipeline.manifest.input.batch_size
    prepared = [pipeline.prepare([f] * batch_size) for f in frames]
    batches = [batch for batch, _ in prepared]
    backend = pipeline.backend
    decoded = [(backend.run(batch), letterboxes) for batch, letterboxes in prepared]
    if e2e is None:
        def e2e(frame: np.ndarray) -> Any:
            return pipeline([frame])
    return time_pair(lambda i: backend.run(batches[i % len(batches)]), lambda i: e2e(frames[i % len(frames)]),
                     warmup=warmup, runs=runs, max_seconds=max_seconds,
                     post_call=lambda i: pipeline.decode(*decoded[i % len(decoded)]))


# ------------------------------------------------------------------------------------ PyTorch


def torch_pipeline(model: Any, *, device: str = "cpu", weights: Any = None) -> Pipeline:
    """The live PyTorch ``model`` (moved to ``device``, in eval mode) in the runtime's own
    :class:`~edgedet.pipeline.Pipeline`: the eager reference row of the table. ``weights``: the
    manifest's :class:`~edgedet.manifest.WeightsInfo`, where the caller knows it."""
    from edgedet.backends.torch import TorchBackend

    backend = TorchBackend.from_module(model.to(device).eval(), device=device)
    return Pipeline(backend.manifest(weights=weights), backend)
