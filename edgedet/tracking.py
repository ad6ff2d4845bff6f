"""Stable ids for the objects a detector sees, frame after frame.

:class:`Tracker` is the interface (``update(detections) -> detections with tracker_id``);
:class:`ByteTracker` implements it with supervision's ByteTrack (``pip install "edgedet[track]"``).
:class:`TrackingDetector` puts a tracker behind a detector, so that everything downstream of the
camera loop (JSON lines, the video overlay, ``on_frame`` hooks) sees ``Detections.tracker_id``::

    detector = TrackingDetector(edgedet.Detector(...), ByteTracker(frame_rate=8))
    run_loop(detector, source, jsonl_out="det.jsonl")   # each record gains "tracker_id"
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgedet.detections import Detections

__all__ = ["ByteTracker", "Tracker", "TrackingDetector"]


@runtime_checkable
class Tracker(Protocol):
    """Assigns ids that stay with an object from frame to frame."""

    def update(self, detections: Detections) -> Detections:
        """The detections of the next frame that belong to a track, with ``tracker_id`` set.

        Detections that start no track yet (too weak, not confirmed) are left out."""
        ...

    def reset(self) -> None:
        """Forget every track (e.g. the camera moved, or a new video starts)."""
        ...


class ByteTracker:
    """:class:`Tracker` backed by supervision's ``ByteTrack`` (motion + IoU matching, no appearance).

    Args:
        frame_rate: frames per second the tracker is fed (the detection rate, not the camera's):
            with ``lost_track_buffer`` it sets how long a lost object keeps its id.
        lost_track_buffer: frames (at 30 FPS; scaled by ``frame_rate``) a lost track is kept.
        track_activation_threshold: minimum confidence that starts a track.
        minimum_matching_threshold: IoU-cost threshold for matching a detection to a track.
        minimum_consecutive_frames: frames an object must be seen before it gets an id.

    Raises:
        ImportError: supervision (with ByteTrack, < 0.31) is not installed; says what to install.
    """

    def __init__(self, frame_rate: float = 10.0, *, lost_track_buffer: int = 30,
                 track_activation_threshold: float = 0.25, minimum_matching_threshold: float = 0.8,
                 minimum_consecutive_frames: int = 1) -> None:
        try:
            import supervision as sv
            byte_track = sv.ByteTrack
        except (ImportError, AttributeError) as exc:
            raise ImportError('tracking needs supervision\'s ByteTrack: pip install "edgedet[track]" '
                              '(supervision>=0.30,<0.31; 0.31 removed ByteTrack)') from exc
        self._sv = sv
        with warnings.catch_warnings():
            # ByteTrack is deprecated in supervision 0.28+ in favour of the `trackers` package, which
            # needs the GUI OpenCV wheel; edgedet pins the last supervision that ships it.
            warnings.simplefilter("ignore", FutureWarning)
            self._tracker = byte_track(track_activation_threshold=track_activation_threshold,
                                       lost_track_buffer=lost_track_buffer,
                                       minimum_matching_threshold=minimum_matching_threshold,
                                       frame_rate=frame_rate, minimum_consecutive_frames=minimum_consecutive_frames)
        self.frame_rate = frame_rate
        #: frames a lost track keeps its id (what ByteTrack computes from the arguments)
        self.max_lost_frames = max(1, int(frame_rate / 30.0 * lost_track_buffer))

    def update(self, detections: Detections) -> Detections:
        sv_in = self._sv.Detections(xyxy=np.array(detections.xyxy, dtype=np.float32).reshape(-1, 4),
                                    confidence=np.array(detections.confidence, dtype=np.float32),
                                    class_id=np.array(detections.class_id, dtype=int))
        sv_out = self._tracker.update_with_detections(sv_in)
        if len(sv_out) == 0:
            return Detections.empty(detections.labels).with_tracker_id([])
        return Detections(sv_out.xyxy, np.clip(sv_out.confidence, 0.0, 1.0), sv_out.class_id, detections.labels,
                          sv_out.tracker_id)

    def reset(self) -> None:
        self._tracker.reset()


class TrackingDetector:
    """A detector whose detections are tracked: ``frame -> Detections`` with ``tracker_id``.

    Wraps any callable detector (an :class:`edgedet.Detector`); its other attributes (``labels``,
    ``variant``...) are passed through. ``classes`` keeps only those classes *before* tracking,
    so that filtered-out classes never take ids (give them here, not to ``run_loop``).
    """

    def __init__(self, detector: Callable[[np.ndarray], Detections], tracker: Tracker,
                 classes: Sequence[int | str] | None = None) -> None:
        self.detector, self.tracker = detector, tracker
        self.classes = None if classes is None else list(classes)

    def __call__(self, frame: np.ndarray) -> Detections:
        detections = self.detector(frame)
        if self.classes is not None:
            detections = detections.filter(classes=self.classes)
        return self.tracker.update(detections)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.detector, name)
