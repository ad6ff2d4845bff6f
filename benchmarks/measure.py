"""Timing one artifact or one PyTorch model: the frames, the loops, the two latencies.

Two figures per row, timed in one interleaved loop (a model-only call, then an end-to-end call,
per round: both see the same load on a shared machine), after untimed warm-up rounds and with
Python's garbage collector paused during the loop (it runs between rows instead):

* **model-only**: ``backend.run(batch)`` on batches preprocessed beforehand from the frames
  (PyTorch: ``model(tensor)`` under ``torch.inference_mode``);
* **end-to-end**: what :class:`edgedet.Detector` does per frame: preprocess (letterbox, normalize)
  + run + decode + NMS + mapping boxes to the frame, via :class:`edgedet.detector.Pipeline`
  (PyTorch: the same preprocess/postprocess functions around ``model``).

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
    """Model-only and end-to-end latency of one row."""

    model: LatencyStats
    e2e: LatencyStats


def time_pair(model_call: Callable[[int], Any], e2e_call: Callable[[int], Any], *, warmup: int, runs: int,
              max_seconds: float | None = None, clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Model-only and end-to-end latency, interleaved: each round times one model-only call, then
    one end-to-end call on the same frame, so that load from other processes, which comes and
    goes, hits both figures alike (two loops one after the other gave a model-only p50 above the
    end-to-end p50 on a busy machine). ``warmup`` untimed rounds first; ``max_seconds`` stops
    after at least 3 rounds."""
    gc.collect()
    for i in range(warmup):
        model_call(i)
        e2e_call(i)
    model: list[float] = []
    e2e: list[float] = []
    with gc_paused():
        started = clock()
        for i in range(runs):
            t0 = clock()
            model_call(i)
            t1 = clock()
            e2e_call(i)
            t2 = clock()
            model.append((t1 - t0) * 1000.0)
            e2e.append((t2 - t1) * 1000.0)
            if max_seconds is not None and len(model) >= 3 and t2 - started > max_seconds:
                break
    return Timing(LatencyStats.from_samples(model), LatencyStats.from_samples(e2e))


# ------------------------------------------------------------------------------------ artifacts


def load_detector(artifact: Artifact, *, device: str, threads: int) -> Detector:
    """Load exactly ``artifact`` as :class:`edgedet.Detector` serves it (file hashes checked,
    runtime options as the detector sets them), with ``threads`` inference threads on ``device``."""
    m = artifact.manifest
    return Detector(variant=m.variant, models=artifact.directory, backend=m.backend, precision=m.precision,
                    threads=threads, device=device, profile_cache=False)


def time_detector(detector: Detector, frames: Sequence[np.ndarray], *, warmup: int, runs: int,
                  max_seconds: float | None = None) -> Timing:
    """Model-only (``backend.run`` on preprocessed batches) and end-to-end (``detector(frame)``)."""
    pipeline = detector.pipeline  # the loaded Pipeline: its backend and its own preprocessing
    batch_size = detector.artifact.manifest.input.batch_size
    batches = [pipeline.prepare([f] * batch_size)[0] for f in frames]
    backend = pipeline.backend
    if batch_size == 1:
        def e2e(i: int) -> Any:
            return detector(frames[i % len(frames)])
    else:  # a fixed-batch artifact: a full batch per call, latency per call
        def e2e(i: int) -> Any:
            return detector.detect_batch([frames[i % len(frames)]] * batch_size)
    return time_pair(lambda i: backend.run(batches[i % len(batches)]), e2e, warmup=warmup, runs=runs,
                     max_seconds=max_seconds)


# ------------------------------------------------------------------------------------ PyTorch


class TorchPipeline:
    """A PyTorch EfficientDet with the runtime's own pre- and post-processing around it (as
    :func:`edgedet.evaluate.evaluate_model` runs it): the eager reference of the table."""

    def __init__(self, model: Any, *, device: str = "cpu", score_threshold: float = 0.3,
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

    def __call__(self, frame: np.ndarray) -> Detections:
        from edgedet.postprocess import postprocess

        x, letterboxes = self.prepare(frame)
        cls, box = self.run(x)
        boxes, scores, classes = postprocess(cls[0].float().cpu().numpy(), box[0].float().cpu().numpy(),
                                             self.anchors, **self.post)
        letterboxes[0].to_frame(boxes)
        return Detections(xyxy=boxes, confidence=scores, class_id=classes)


def time_torch(pipeline: TorchPipeline, frames: Sequence[np.ndarray], *, warmup: int, runs: int,
               max_seconds: float | None = None) -> Timing:
    """Model-only (``model(x)``) and end-to-end latency of the PyTorch eager model."""
    inputs = [pipeline.prepare(f)[0] for f in frames]
    return time_pair(lambda i: pipeline.run(inputs[i % len(inputs)]), lambda i: pipeline(frames[i % len(frames)]),
                     warmup=warmup, runs=runs, max_seconds=max_seconds)
