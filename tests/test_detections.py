"""edgedet.detections.Detections: construction, container behaviour, filtering, drawing, export."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from edgedet.detections import Detection, Detections, class_color

LABELS = ("person", "bicycle", "car", "dog")


def sample() -> Detections:
    return Detections(
        xyxy=[[10, 20, 110, 220], [300, 40, 360, 90], [50, 60, 70, 80], [200, 200, 260, 300]],
        confidence=[0.91, 0.42, 0.77, 0.3],
        class_id=[0, 2, 3, 2],
        labels=LABELS,
    )


def test_fields_dtypes_and_immutability():
    boxes = np.array([[1, 2, 3, 4]], np.float64)
    det = Detections(boxes, np.array([0.5]), np.array([1], np.int64), labels=list(LABELS))
    assert det.xyxy.dtype == np.float32 and det.xyxy.shape == (1, 4)
    assert det.confidence.dtype == np.float32 and det.class_id.dtype == np.int32
    assert det.labels == LABELS  # a tuple, whatever sequence was given
    assert not det.xyxy.flags.writeable and not det.confidence.flags.writeable
    with pytest.raises(ValueError):
        det.xyxy[0, 0] = 5
    with pytest.raises(AttributeError):
        det.labels = None
    boxes[0, 0] = 99  # the caller's array stays the caller's
    assert boxes.flags.writeable and det.xyxy[0, 0] == 1


def test_len_iter_and_records():
    det = sample()
    assert len(det) == 4
    records = list(det)
    assert all(isinstance(r, Detection) for r in records)
    first = records[0]
    assert first.box == (10.0, 20.0, 110.0, 220.0)
    assert first.confidence == pytest.approx(0.91) and first.class_id == 0 and first.label == "person"
    x1, y1, x2, y2 = first.box  # plain tuples and Python scalars
    assert isinstance(x1, float) and isinstance(first.class_id, int)
    assert [r.label for r in records] == ["person", "car", "dog", "car"]
    assert det.class_names == ["person", "car", "dog", "car"]
    unlabeled = Detections(det.xyxy, det.confidence, det.class_id)
    assert unlabeled.class_names == ["0", "2", "3", "2"]
    assert [r.label for r in unlabeled] == [None] * 4


def test_getitem_int_mask_index_slice():
    det = sample()
    assert det[1] == Detection((300.0, 40.0, 360.0, 90.0), pytest.approx(0.42), 2, "car")
    assert det[-1].class_id == 2 and det[-1].box[0] == 200.0
    with pytest.raises(IndexError):
        det[4]
    high = det[det.confidence > 0.5]
    assert isinstance(high, Detections) and len(high) == 2 and high.labels == LABELS
    np.testing.assert_array_equal(high.class_id, [0, 3])
    picked = det[np.array([3, 0])]
    np.testing.assert_array_equal(picked.class_id, [2, 0])
    np.testing.assert_allclose(picked.xyxy[0], [200, 200, 260, 300])
    assert len(det[[]]) == 0 and len(det[1:3]) == 2
    assert len(det[np.zeros(4, bool)]) == 0
    with pytest.raises(IndexError):
        det[np.array([True, False])]


def test_empty():
    empty = Detections.empty(labels=LABELS)
    assert len(empty) == 0 and list(empty) == [] and empty.labels == LABELS
    assert empty.xyxy.shape == (0, 4) and empty.confidence.shape == (0,) and empty.class_id.shape == (0,)
    assert empty.class_names == [] and empty.to_json_records() == []
    assert Detections.empty().labels is None
    assert Detections([], [], []) == Detections.empty()
    assert len(empty.filter(classes="car", min_confidence=0.5)) == 0


def test_filter():
    det = sample()
    np.testing.assert_array_equal(det.filter(classes="car").confidence, np.float32([0.42, 0.3]))
    np.testing.assert_array_equal(det.filter(classes=[0, "dog"]).class_id, [0, 3])
    np.testing.assert_array_equal(det.filter(classes=2).class_id, [2, 2])
    np.testing.assert_array_equal(det.filter(min_confidence=0.42).class_id, [0, 2, 3])
    np.testing.assert_array_equal(det.filter(classes="car", min_confidence=0.4).confidence,
                                  np.float32([0.42]))
    assert det.filter() == det
    with pytest.raises(ValueError, match="unknown class name 'cat'"):
        det.filter(classes="cat")
    with pytest.raises(ValueError, match="no labels"):
        Detections(det.xyxy, det.confidence, det.class_id).filter(classes="car")


@pytest.mark.parametrize("kwargs, match", [
    (dict(xyxy=np.zeros((2, 3)), confidence=[0.5, 0.5], class_id=[0, 0]), r"xyxy must be \[N, 4\]"),
    (dict(xyxy=np.zeros(4), confidence=[0.5], class_id=[0]), r"xyxy must be \[N, 4\]"),
    (dict(xyxy=np.zeros((2, 4)), confidence=[0.5], class_id=[0, 0]), r"confidence must be \[2\]"),
    (dict(xyxy=np.zeros((2, 4)), confidence=[0.5, 0.5], class_id=[0]), r"class_id must be \[2\]"),
    (dict(xyxy=np.zeros((1, 4)), confidence=[0.5], class_id=[[0]]), r"class_id must be \[1\]"),
    (dict(xyxy=np.zeros((1, 4)), confidence=[0.5], class_id=[-1]), "class_id must be >= 0"),
    (dict(xyxy=np.zeros((1, 4)), confidence=[0.5], class_id=[0.5]), "integers"),
    (dict(xyxy=np.zeros((1, 4)), confidence=[1.5], class_id=[0]), r"confidence must be in \[0, 1\]"),
    (dict(xyxy=np.zeros((1, 4)), confidence=[np.nan], class_id=[0]), r"confidence must be in"),
    (dict(xyxy=[[0, 0, np.inf, 1]], confidence=[0.5], class_id=[0]), "NaN or infinite"),
    (dict(xyxy=np.zeros((1, 4)), confidence=[0.5], class_id=[4], labels=LABELS), "has no label"),
    (dict(xyxy=np.zeros((1, 4)), confidence=[0.5], class_id=[0], labels="person"), "sequence"),
])
def test_bad_shapes_and_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Detections(**kwargs)


def test_integral_float_class_ids_accepted():
    det = Detections(np.zeros((2, 4)), [0.5, 0.6], np.array([1.0, 3.0]))
    np.testing.assert_array_equal(det.class_id, [1, 3])


def test_draw_changes_pixels_on_the_box_only():
    frame = np.full((240, 320, 3), 40, np.uint8)
    det = Detections([[100, 120, 200, 200]], [0.87], [2], labels=LABELS)
    out = det.draw(frame, thickness=2)
    assert out is not frame and out.shape == frame.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(frame, 40)  # copy=True leaves the input alone
    # The box outline has the class's color, on its left edge and bottom edge.
    assert tuple(out[160, 100]) == class_color(2)
    assert tuple(out[200, 150]) == class_color(2)
    # The caption sits just above the box: changed pixels there.
    assert (out[100:119, 100:190] != 40).any()
    # Inside the box (away from the outline and caption) and far away: untouched.
    np.testing.assert_array_equal(out[140:190, 110:190], 40)
    np.testing.assert_array_equal(out[:90], 40)
    np.testing.assert_array_equal(out[:, 230:], 40)
    # In place.
    target = frame.copy()
    same = det.draw(target, copy=False)
    assert same is target
    np.testing.assert_array_equal(same, out)
    # Deterministic, and different classes get different colors.
    np.testing.assert_array_equal(det.draw(frame), out)
    assert class_color(0) != class_color(2) and class_color(2) == class_color(22)


def test_draw_edge_cases():
    frame = np.zeros((100, 100, 3), np.uint8)
    # A box at the top edge (caption goes inside) and one far outside the frame: no error.
    det = Detections([[0, 0, 50, 40], [-1e6, -1e6, 1e6, 1e6]], [0.5, 0.6], [0, 1])
    out = det.draw(frame)
    assert (out[:40, :50] != 0).any()
    assert Detections.empty().draw(frame).sum() == 0
    with pytest.raises(ValueError, match="uint8"):
        det.draw(frame.astype(np.float32))
    with pytest.raises(ValueError, match="writable"):
        det.draw(frame[:, ::-1], copy=False)


def test_json_records_round_trip():
    det = sample()
    records = det.to_json_records()
    assert records[0] == {"xyxy": [10.0, 20.0, 110.0, 220.0], "confidence": float(np.float32(0.91)),
                          "class_id": 0, "class_name": "person"}
    line = json.dumps(records)  # plain Python types only
    back = Detections.from_json_records(json.loads(line), labels=LABELS)
    assert back == det
    assert Detections.from_json_records(json.loads(det.to_json()), labels=LABELS) == det
    assert Detections.from_json_records([], labels=LABELS) == Detections.empty(LABELS)
    as_dict = json.loads(json.dumps(det.to_dict()))
    assert as_dict["class_name"] == det.class_names and as_dict["labels"] == list(LABELS)
    assert Detections.from_dict(as_dict) == det
    assert Detections.from_dict(Detections.empty().to_dict()) == Detections.empty()
    assert det != Detections.from_json_records(records)  # labels differ


def test_equality_and_repr():
    assert sample() == sample()
    assert sample() != sample()[np.array([0, 1, 2])]
    assert "person 0.91" in repr(sample())
    with pytest.raises(TypeError):
        hash(sample())


def test_to_supervision_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # import supervision -> ImportError
    with pytest.raises(ImportError, match="pip install supervision"):
        sample().to_supervision()


def test_to_supervision_with_the_package(monkeypatch):
    fake = types.ModuleType("supervision")

    class FakeDetections:
        def __init__(self, xyxy, confidence=None, class_id=None, data=None, **_):
            self.xyxy, self.confidence, self.class_id, self.data = xyxy, confidence, class_id, data

    fake.Detections = FakeDetections
    monkeypatch.setitem(sys.modules, "supervision", fake)
    det = sample()
    sv = det.to_supervision()
    np.testing.assert_array_equal(sv.xyxy, det.xyxy)
    np.testing.assert_array_equal(sv.confidence, det.confidence)
    np.testing.assert_array_equal(sv.class_id, det.class_id)
    assert sv.xyxy.flags.writeable  # supervision may modify its arrays
    assert list(sv.data["class_name"]) == det.class_names
    assert Detections.empty().to_supervision().data == {}


def test_tracker_id_is_optional_kept_through_indexing_and_in_the_records():
    det = sample()
    assert det.tracker_id is None and "tracker_id" not in det.to_json_records()[0]
    tracked = det.with_tracker_id(np.arange(len(det)) + 7)
    assert tracked.tracker_id.dtype == np.int64 and not tracked.tracker_id.flags.writeable
    assert tracked != det and tracked == det.with_tracker_id(np.arange(len(det)) + 7)
    assert tracked[np.array([2, 0])].tracker_id.tolist() == [9, 7]
    assert tracked.filter(min_confidence=0.0).tracker_id.tolist() == tracked.tracker_id.tolist()
    records = tracked.to_json_records()
    assert [r["tracker_id"] for r in records] == [7, 8, 9][:len(det)] + list(range(10, 7 + len(det)))
    back = Detections.from_json_records(json.loads(json.dumps(records)), labels=LABELS)
    assert back == tracked
    assert Detections.from_dict(json.loads(json.dumps(tracked.to_dict()))) == tracked
    assert (tracked.draw(np.zeros((300, 300, 3), np.uint8)) != 0).any()
    with pytest.raises(ValueError, match="tracker_id"):
        Detections(det.xyxy, det.confidence, det.class_id, LABELS, tracker_id=[1])
