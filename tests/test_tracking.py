"""Tracking (supervision's ByteTrack behind edgedet.tracking) and the events made from tracks."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from edgedet.detections import Detections
from edgedet.events import TrackEvents
from moving_scene import RedObjectDetector, object_box, render

LABELS = ("person", "car")


def test_one_moving_object_keeps_one_id():
    pytest.importorskip("supervision")
    from edgedet.tracking import ByteTracker, Tracker, TrackingDetector

    tracker = ByteTracker(frame_rate=10)
    assert isinstance(tracker, Tracker)
    detector = TrackingDetector(RedObjectDetector(), tracker)
    assert detector.labels == ("person",)  # attributes pass through
    ids = []
    for i in range(40):
        tracked = detector(render(i, 40))
        assert tracked.tracker_id is not None
        ids += tracked.tracker_id.tolist()
        if len(tracked):
            box = object_box(i, 40)
            np.testing.assert_allclose(tracked.xyxy[0], box, atol=3)
    assert len(ids) >= 18 and len(set(ids)) == 1
    tracker.reset()
    assert len(tracker.update(Detections.empty(LABELS))) == 0


def test_classes_are_filtered_before_tracking():
    pytest.importorskip("supervision")
    from edgedet.tracking import ByteTracker, TrackingDetector

    both = Detections([[10, 10, 50, 50], [100, 100, 150, 150]], [0.9, 0.9], [0, 1], LABELS)
    detector = TrackingDetector(lambda frame: both, ByteTracker(), classes=["car"])
    out = detector(np.zeros((200, 200, 3), np.uint8))
    assert out.class_names == ["car"] and out.tracker_id is not None


def test_without_supervision_the_error_says_what_to_install(monkeypatch):
    from edgedet.tracking import ByteTracker

    monkeypatch.setitem(sys.modules, "supervision", None)
    with pytest.raises(ImportError, match=r"edgedet\[track\]"):
        ByteTracker()


def frame_of(*tracks: tuple[int, float, float]) -> Detections:
    """Detections of (tracker id, x, score) boxes, all "person"."""
    if not tracks:
        return Detections.empty(LABELS).with_tracker_id([])
    return Detections([[x, 0, x + 10, 10] for _, x, _ in tracks], [s for *_, s in tracks], [0] * len(tracks), LABELS,
                      [t for t, *_ in tracks])


def test_events_new_update_end_and_close():
    events = TrackEvents("cam", max_missed_frames=2, update_interval_s=1.0)
    size = (100, 50)
    kinds = []
    script = [frame_of((1, 0, 0.5)), frame_of((1, 1, 0.5)), frame_of((1, 2, 0.6)), frame_of((1, 3, 0.6)),
              frame_of((1, 4, 0.6), (2, 50, 0.4)), frame_of((2, 51, 0.4)), frame_of(), frame_of(), frame_of()]
    for t, detections in enumerate(script):
        kinds += [(e.type, e.tracker_id) for e in events.update(detections, frame_time=100.0 + t * 0.4, frame_size=size)]
    # Frames are 0.4 s apart. 1: new at t=0; an update at t=2 (its top score rose), none after (under a
    # second since); last seen at t=4, ended at t=7 (more than 2 missed frames). 2: new at t=4, ended at t=8.
    assert kinds == [("new", 1), ("update", 1), ("new", 2), ("end", 1), ("end", 2)], kinds
    assert events.active == {}
    events.update(frame_of((3, 0, 0.9)), frame_time=200.0, frame_size=size)
    (end,) = events.close()
    record = end.to_dict()
    assert record["type"] == "end" and record["tracker_id"] == 3 and record["end_time"] == 200.0
    assert record["box"] == [0.0, 0.0, 10.0, 10.0] and record["frame_width"] == 100 and record["id"] == "cam-200.000-3"
    assert events.update(Detections.empty(LABELS), frame_time=201.0, frame_size=size) == []  # untracked: no events
