"""Timing one artifact or one PyTorch model: the frames, the loops, the two latencies.

Three figures per row, timed in one interleaved loop (a model-only call, an end-to-end call, then
a post-processing call per round: all see the same load on a shared machine), after untimed
warm-up rounds and with Python's garbage collector paused during the loop (it runs between rows
instead):

* **model-only**: ``backend.run(batch)`` on batches preprocessed beforehand from the frames
  (PyTorch: ``model(tensor)`` under ``torch.inference_mode``);
* **end-to-end**: what :class:`edgedet.Detector` does per frame: preprocess (letterbox, normalize)
  + run + decode + NMS + mapping boxes to the frame, via :class:`edgedet.detector.Pipeline`
  (PyTorch: the same preprocess/postprocess functions around ``model``);
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

from edgedet.detections import Detections
from edgedet.detector import Artifact, Detector
from edgedet.postprocess import DEFAULT_SCORE_THRESHOLD
from edgedet.profiling import LatencyStats

__all__ = ["Timing", "TorchPipeline", "bench_frames", "gc_paused", "load_detector", "time_detector",
           "time_pair", "time_torch"]

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
    """Model-only (``backend.run`` on preprocessed batches), end-to-end (``detector(frame)``) and
    post-processing (``pipeline.decode`` on the outputs of the same frames)."""
    pipeline = detector.pipeline  # the loaded Pipeline: its backend and its own preprocessing
    batch_size = detector.artifact.manifest.input.batch_size
    prepared = [pipeline.prepare([f] * batch_size) for f in frames]
    batches = [batch for batch, _ in prepared]
    backend = pipeline.backend
    decoded = [(backend.run(batch), letterboxes) for batch, letterboxes in prepared]
    if batch_size == 1:
        def e2e(i: int) -> Any:
            return detector(frames[i % len(frames)])
    else:  # a fixed-batch artifact: a full batch per call, latency per call
        def e2e(i: int) -> Any:
            return detector.detect_batch([frames[i % len(frames)]] * batch_size)
    return time_pair(lambda i: backend.run(batches[i % len(batches)]), e2e, warmup=warmup, runs=runs,
                     max_seconds=max_seconds, post_call=lambda i: pipeline.decode(*decoded[i % len(decoded)]))


# ------------------------------------------------------------------------------------ PyTorch


class TorchPipeline:
    """A PyTorch EfficientDet with the runtime's own pre- and post-processing around it (as
    :func:`edgedet.model.evaluate.evaluate_model` runs it): the eager reference of the table."""

    def __init__(self, model: Any, *, device: str = "cpu", score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 iou_threshold: float = 0.5, max_detections: int = 100) -> None:
        import torch

        from edgedet.anchors import generate_anchors

        self.torch = torch
        self.model = model.to(device).eval()
        self.device = device
        self.config = model.config
        self.size = int(getattr(model, "image_size", self.config.image_size))
        self.anchors = generate_anchors(self.config, self.size)
        self.post = dict(score_threshold=score_threshold, iou_threshold=iou_threshold,
                         max_detections=max_detections)

    def prepare(self, frame: np.ndarray) -> tuple[Any, list]:
        from edgedet.preprocess import preprocess

        norm = self.config.normalization
        batch, boxes = preprocess([frame], self.size, norm.mean, norm.std, layout="NCHW")
        return self.torch.from_numpy(batch).to(self.device), boxes

    def run(self, x: Any) -> tuple[Any, Any]:
        with self.torch.inference_mode():
            cls, box = self.model(x)
            if self.device != "cpu":
                self.torch.cuda.synchronize()
        return cls, box

    def decode(self, outputs: tuple[Any, Any], letterboxes: list) -> Detections:
        from edgedet.postprocess import postprocess

        cls, box = outputs
        boxes, scores, classes = postprocess(cls[0].float().cpu().numpy(), box[0].float().cpu().numpy(),
                                             self.anchors, **self.post)
        letterboxes[0].to_frame(boxes)
        return Detections(xyxy=boxes, confidence=scores, class_id=classes)

    def __call__(self, frame: np.ndarray) -> Detections:
        x, letterboxes = self.prepare(frame)
        return self.decode(self.run(x), letterboxes)


def time_torch(pipeline: TorchPipeline, frames: Sequence[np.ndarray], *, warmup: int, runs: int,
               max_seconds: float | None = None) -> Timing:
    """Model-only (``model(x)``) and end-to-end latency of the PyTorch eager model."""
    prepared = [pipeline.prepare(f) for f in frames]
    inputs = [x for x, _ in prepared]
    decoded = [(pipeline.run(x), letterboxes) for x, letterboxes in prepared]
    return time_pair(lambda i: pipeline.run(inputs[i % len(inputs)]), lambda i: pipeline(frames[i % len(frames)]),
                     warmup=warmup, runs=runs, max_seconds=max_seconds,
                     post_call=lambda i: pipeline.decode(*decoded[i % len(decoded)]))
