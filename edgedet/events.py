"""Object events from tracked detections: ``new`` when an id appears, ``update`` while it is seen,
``end`` when it is gone. Pure bookkeeping (no I/O), fed once per processed frame::

    events = TrackEvents(camera="door")
    for e in events.update(tracked_detections, frame_time=info.timestamp, frame_size=(w, h)):
        print(e.type, e.to_dict())
    for e in events.close(): ...        # every open track ends

Each event carries what Frigate's MQTT events carry, flattened: id, label, score, top score,
box in frame pixels, start and end time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from edgedet.detections import Detections

__all__ = ["TrackEvent", "TrackEvents"]

EventType = Literal["new", "update", "end"]


@dataclass
class _Track:
    tracker_id: int
    label: str
    class_id: int
    score: float
    top_score: float
    box: tuple[float, float, float, float]
    start_time: float
    last_time: float
    frames: int = 1
    missed: int = 0
    last_sent: float = 0.0
    new_top: bool = False


@dataclass(frozen=True)
class TrackEvent:
    """One lifecycle event of one tracked object.

    ``box`` is ``(x1, y1, x2, y2)`` in frame pixels (the last seen); times are Unix seconds
    (``end_time`` only on ``end``); ``top_score`` is the highest score seen so far; ``frames`` how
    many frames it was seen in; ``best`` is true on the event where ``top_score`` went up.
    """

    type: EventType
    camera: str
    tracker_id: int
    label: str
    class_id: int
    score: float
    top_score: float
    box: tuple[float, float, float, float]
    frame_size: tuple[int, int]
    start_time: float
    frame_time: float
    end_time: float | None = None
    frames: int = 1
    best: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """A unique id for the event stream: ``<camera>-<start time>-<tracker id>``."""
        return f"{self.camera}-{self.start_time:.3f}-{self.tracker_id}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the payload published on ``<prefix>/events``."""
        return {"type": self.type, "id": self.id, "camera": self.camera, "tracker_id": self.tracker_id,
                "label": self.label, "class_id": self.class_id, "score": round(self.score, 4),
                "top_score": round(self.top_score, 4), "box": [round(v, 1) for v in self.box],
                "frame_width": self.frame_size[0], "frame_height": self.frame_size[1],
                "start_time": round(self.start_time, 3), "frame_time": round(self.frame_time, 3),
                "end_time": None if self.end_time is None else round(self.end_time, 3),
                "frames": self.frames, **self.extra}


class TrackEvents:
    """Turns tracked :class:`Detections` into :class:`TrackEvent` s.

    Args:
        camera: the camera name put in every event.
        max_missed_frames: frames an id may be missing before its track ends (match the tracker's
            lost-track buffer, so that an id that comes back is the same event, not a new one).
        update_interval_s: ``update`` events per track at most this often (0: every frame); an
            update is also sent at once when the top score rises.
    """

    def __init__(self, camera: str = "camera", *, max_missed_frames: int = 30, update_interval_s: float = 1.0) -> None:
        if max_missed_frames < 0 or update_interval_s < 0:
            raise ValueError("max_missed_frames and update_interval_s must be >= 0")
        self.camera = camera
        self.max_missed_frames, self.update_interval_s = int(max_missed_frames), float(update_interval_s)
        self._tracks: dict[int, _Track] = {}
        self._size: tuple[int, int] = (0, 0)
        self._last_time = 0.0

    @property
    def active(self) -> dict[int, str]:
        """Open tracks: tracker id → label."""
        return {tid: t.label for tid, t in self._tracks.items()}

    def update(self, detections: Detections, *, frame_time: float, frame_size: tuple[int, int]) -> list[TrackEvent]:
        """The events of one frame. Detections without ``tracker_id`` make no events."""
        self._size, self._last_time = (int(frame_size[0]), int(frame_size[1])), frame_time
        events: list[TrackEvent] = []
        seen: set[int] = set()
        if detections.tracker_id is not None:
            for det, name, tid in zip(detections, detections.class_names, detections.tracker_id.tolist()):
                seen.add(tid)
                track = self._tracks.get(tid)
                box = tuple(float(v) for v in det.box)
                if track is None:
                    track = _Track(tid, name, det.class_id, det.confidence, det.confidence, box,  # type: ignore[arg-type]
                                   frame_time, frame_time, last_sent=frame_time)
                    self._tracks[tid] = track
                    events.append(self._event("new", track, best=True))
                    continue
                track.frames += 1
                track.missed = 0
                track.score, track.box, track.last_time = det.confidence, box, frame_time  # type: ignore[assignment]
                best = det.confidence > track.top_score
                if best:
                    track.top_score = det.confidence
                if best or frame_time - track.last_sent >= self.update_interval_s:
                    track.last_sent = frame_time
                    events.append(self._event("update", track, best=best))
        for tid in [t for t in self._tracks if t not in seen]:
            track = self._tracks[tid]
            track.missed += 1
            if track.missed > self.max_missed_frames:
                del self._tracks[tid]
                events.append(self._event("end", track, end_time=track.last_time))
        return events

    def close(self) -> list[TrackEvent]:
        """End every open track (the loop is stopping)."""
        events = [self._event("end", t, end_time=t.last_time) for t in self._tracks.values()]
        self._tracks.clear()
        return events

    def _event(self, kind: EventType, track: _Track, *, best: bool = False, end_time: float | None = None) -> TrackEvent:
        return TrackEvent(kind, self.camera, track.tracker_id, track.label, track.class_id, track.score,
                          track.top_score, track.box, self._size, track.start_time, track.last_time,
                          end_time=end_time, frames=track.frames, best=best)
