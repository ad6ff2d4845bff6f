"""edgedet.postprocess against a plain reference (sigmoid everything, threshold, decode all,
per-class greedy NMS written out), and its fast paths against themselves."""
from __future__ import annotations

import math

import numpy as np
import pytest

import edgedet.postprocess as pp
from edgedet.anchors import decode_boxes, encode_boxes, generate_anchors
from edgedet.config import get_config
from edgedet.postprocess import (
    candidates,
    nms,
    nms_numpy,
    nms_opencv,
    postprocess,
    postprocess_batch,
    score_to_logit,
    sigmoid,
)


# --- the reference -------------------------------------------------------------------------------

def _iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference(cls_logits, box_regression, anchors, *, score_threshold=0.3, iou_threshold=0.5,
              max_detections=100, pre_nms_top_k=5000, class_agnostic=False):
    """The obvious, slow pipeline: every score, every box, a Python greedy NMS per class."""
    scores = 1.0 / (1.0 + np.exp(-np.asarray(cls_logits, dtype=np.float64)))
    boxes = decode_boxes(np.asarray(box_regression, dtype=np.float32), anchors).astype(np.float64)
    anchor_idx, class_idx = np.nonzero(scores > score_threshold)
    pair_scores = scores[anchor_idx, class_idx]
    order = np.argsort(-pair_scores, kind="stable")[:pre_nms_top_k]
    kept: list[int] = []
    for i in order:  # greedy: keep i unless a kept box of its class overlaps it too much
        box = boxes[anchor_idx[i]].tolist()
        if any((class_agnostic or class_idx[k] == class_idx[i]) and
               _iou(kept_box, box) > iou_threshold for k, kept_box in kept):
            continue
        kept.append((i, box))
    kept = [i for i, _ in kept]
    kept = kept[:max_detections]
    return (boxes[anchor_idx[kept]].astype(np.float32), pair_scores[kept].astype(np.float32),
            class_idx[kept].astype(np.int32))


def assert_same(result, expected):
    boxes, scores, classes = result
    rb, rs, rc = expected
    assert boxes.dtype == np.float32 and scores.dtype == np.float32 and classes.dtype == np.int32
    assert boxes.shape == (len(scores), 4) and classes.shape == scores.shape
    np.testing.assert_array_equal(classes, rc)
    np.testing.assert_allclose(scores, rs, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(boxes, rb, rtol=1e-5, atol=1e-3)
    assert np.all(np.diff(scores) <= 0), "not sorted by descending score"


# --- inputs --------------------------------------------------------------------------------------

def random_problem(seed: int, n: int = 400, c: int = 4, size: float = 128.0, spread: float = 1.5):
    """Many overlapping candidates of a few classes (boxes may leave the image: negative coords)."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10, size + 10, (n, 2))
    half = rng.uniform(4, 30, (n, 2))
    anchors = np.concatenate([centers - half, centers + half], axis=1).astype(np.float32)
    logits = rng.normal(-1.0, spread, (n, c)).astype(np.float32)
    regression = rng.normal(0.0, 0.3, (n, 4)).astype(np.float32)
    return logits, regression, anchors


def _iou_with(box, anchors):
    w = np.minimum(box[2], anchors[:, 2]) - np.maximum(box[0], anchors[:, 0])
    h = np.minimum(box[3], anchors[:, 3]) - np.maximum(box[1], anchors[:, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    areas = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    return inter / ((box[2] - box[0]) * (box[3] - box[1]) + areas - inter)


def realistic_problem(name: str, seed: int = 0, objects: int = 5, num_classes: int = 90):
    """Outputs shaped like a trained model's: background logits near the focal-loss prior
    (-4.6), a few objects lighting up the anchors that overlap them, regressions toward them."""
    config = get_config(name)
    anchors = generate_anchors(config)
    n, size = len(anchors), config.image_size
    rng = np.random.default_rng(seed)
    logits = rng.normal(-4.6, 0.6, (n, num_classes)).astype(np.float32)
    regression = rng.normal(0.0, 0.1, (n, 4)).astype(np.float32)
    for _ in range(objects):
        w, h = rng.uniform(0.05, 0.6, 2) * size
        x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
        box = np.array([x, y, x + w, y + h], np.float32)
        iou = _iou_with(box, anchors)
        rows = np.flatnonzero(iou > 0.35)
        cls = rng.integers(num_classes)
        logits[rows, cls] = rng.normal(-1 + 4 * iou[rows], 0.5)
        other = rng.integers(num_classes)  # a confusable second class on some anchors
        logits[rows[: len(rows) // 3], other] = rng.normal(-0.5, 0.4, len(rows) // 3)
        regression[rows] = (encode_boxes(np.broadcast_to(box, (len(rows), 4)), anchors[rows])
                            + rng.normal(0, 0.05, (len(rows), 4)))
    return logits, regression, anchors


# --- against the reference -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("method", ["opencv", "numpy"])
def test_random_matches_reference(seed, agnostic, method):
    logits, regression, anchors = random_problem(seed)
    got = postprocess(logits, regression, anchors, class_agnostic=agnostic, nms_method=method)
    want = reference(logits, regression, anchors, class_agnostic=agnostic)
    assert len(want[0]) > 10  # the problem is not trivial
    assert_same(got, want)


@pytest.mark.parametrize("name", ["lite0", "d0"])
def test_realistic_matches_reference(name):
    logits, regression, anchors = realistic_problem(name)
    got = postprocess(logits, regression, anchors)
    want = reference(logits, regression, anchors)
    assert 5 <= len(want[0]) < 100
    assert_same(got, want)
    assert_same(postprocess(logits, regression, anchors, nms_method="numpy"), want)


def test_float16_outputs_match_reference_on_the_same_values():
    logits, regression, anchors = realistic_problem("lite0", seed=3)
    logits16, regression16 = logits.astype(np.float16), regression.astype(np.float16)
    got = postprocess(logits16, regression16, anchors)
    want = reference(logits16.astype(np.float32), regression16.astype(np.float32), anchors)
    assert len(want[0]) > 3
    assert_same(got, want)
    # And the random problem, with many candidates near the threshold.
    logits, regression, anchors = random_problem(11)
    got = postprocess(logits.astype(np.float16), regression.astype(np.float16), anchors)
    want = reference(logits.astype(np.float16).astype(np.float32),
                     regression.astype(np.float16).astype(np.float32), anchors)
    assert_same(got, want)


@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.5, 0.8])
def test_other_thresholds_match_reference(threshold):
    logits, regression, anchors = random_problem(7, spread=2.5)
    for iou in (0.3, 0.7):
        got = postprocess(logits, regression, anchors, score_threshold=threshold, iou_threshold=iou)
        want = reference(logits, regression, anchors, score_threshold=threshold, iou_threshold=iou)
        assert_same(got, want)


def test_pre_nms_top_k_matches_reference():
    logits, regression, anchors = random_problem(5)
    got = postprocess(logits, regression, anchors, pre_nms_top_k=30)
    want = reference(logits, regression, anchors, pre_nms_top_k=30)
    assert_same(got, want)
    assert len(got[0]) < len(postprocess(logits, regression, anchors)[0])


# --- specific behaviours -------------------------------------------------------------------------

def test_nothing_above_threshold_gives_typed_empty_result():
    logits = np.full((1000, 90), -6.0, np.float32)
    regression = np.zeros((1000, 4), np.float32)
    anchors = random_problem(0, n=1000)[2]
    for dtype in (np.float32, np.float16):
        boxes, scores, classes = postprocess(logits.astype(dtype), regression.astype(dtype), anchors)
        assert boxes.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,)
        assert (boxes.dtype, scores.dtype, classes.dtype) == (np.float32, np.float32, np.int32)
    # score_threshold 1 keeps nothing, whatever the logits.
    assert len(postprocess(np.full((4, 2), 50.0, np.float32), np.zeros((4, 4), np.float32),
                           anchors[:4], score_threshold=1.0)[1]) == 0


def test_max_detections_caps_and_keeps_the_best():
    # 300 disjoint boxes on a grid, all above the threshold: NMS removes none.
    n = 300
    xs, ys = np.meshgrid(np.arange(20) * 20.0, np.arange(15) * 20.0)
    anchors = np.stack([xs.ravel(), ys.ravel(), xs.ravel() + 10, ys.ravel() + 10], 1).astype(np.float32)
    logits = np.linspace(0.0, 5.0, n, dtype=np.float32)[np.random.default_rng(0).permutation(n)]
    logits = logits[:, None]
    regression = np.zeros((n, 4), np.float32)
    boxes, scores, classes = postprocess(logits, regression, anchors, max_detections=25)
    assert len(scores) == 25
    np.testing.assert_allclose(scores, np.sort(sigmoid(logits[:, 0]))[::-1][:25], rtol=1e-6)
    np.testing.assert_allclose(boxes, anchors[np.argsort(-logits[:, 0])[:25]], atol=1e-4)
    assert len(postprocess(logits, regression, anchors, max_detections=1000)[1]) == n
    assert len(postprocess(logits, regression, anchors, max_detections=0)[1]) == 0


def test_class_aware_vs_agnostic():
    anchors = np.array([[10, 10, 60, 60], [12, 12, 62, 62], [100, 100, 150, 150]], np.float32)
    regression = np.zeros((3, 4), np.float32)
    # Anchor 0: class 0; anchor 1 (IoU 0.85 with 0): class 1; anchor 2: class 0.
    logits = np.array([[3.0, -9.0], [-9.0, 2.0], [1.0, -9.0]], np.float32)
    boxes, scores, classes = postprocess(logits, regression, anchors)
    np.testing.assert_array_equal(classes, [0, 1, 0])
    boxes, scores, classes = postprocess(logits, regression, anchors, class_agnostic=True)
    np.testing.assert_array_equal(classes, [0, 0])
    np.testing.assert_allclose(boxes, anchors[[0, 2]])
    # The same anchor scoring two classes is two detections when class-aware.
    logits = np.array([[3.0, 2.0], [-9.0, -9.0], [-9.0, -9.0]], np.float32)
    assert len(postprocess(logits, regression, anchors)[1]) == 2
    assert len(postprocess(logits, regression, anchors, class_agnostic=True)[1]) == 1


def test_same_class_overlap_suppressed_only_above_iou_threshold():
    # IoU of the two boxes is exactly 0.5: kept (suppression needs IoU > threshold).
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 20]], np.float32)
    logits = np.array([[2.0], [1.0]], np.float32)
    regression = np.zeros((2, 4), np.float32)
    for method in ("opencv", "numpy"):
        assert len(postprocess(logits, regression, anchors, nms_method=method)[1]) == 2
        assert len(postprocess(logits, regression, anchors, iou_threshold=0.49,
                               nms_method=method)[1]) == 1


def test_threshold_is_exact_on_logits_float32_and_float16():
    for t in (0.3, 0.5, 0.7, 0.001):
        bound = score_to_logit(t)
        # float32 values around the bound, and a spread of others.
        f32 = np.float32(bound)
        near = [np.nextafter(f32, np.float32(-np.inf)), f32, np.nextafter(f32, np.float32(np.inf))]
        values = np.concatenate([np.array(near, np.float32),
                                 np.linspace(-20, 20, 997, dtype=np.float32)])
        idx, cls, logits = candidates(values.reshape(-1, 1), t, 10**6)
        np.testing.assert_array_equal(np.sort(idx), np.flatnonzero(values.astype(np.float64) > bound))
        # Every float16 number (bar NaN), through the integer comparison.
        f16 = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
        f16 = f16[~np.isnan(f16)]
        idx, cls, logits = candidates(f16.reshape(-1, 2), t, 10**6)
        expected = np.flatnonzero(f16.astype(np.float64) > bound)
        np.testing.assert_array_equal(np.sort(idx * 2 + cls), expected)
        np.testing.assert_array_equal(logits[np.argsort(idx * 2 + cls)], f16[expected].astype(np.float32))


def test_threshold_zero_and_nan_logits():
    values = np.array([[-np.inf, -1e4, 0.0, np.nan, np.inf, -0.0]], np.float32).reshape(-1, 1)
    for dtype in (np.float32, np.float16):
        idx, _, _ = candidates(values.astype(dtype), 0.0, 100)
        np.testing.assert_array_equal(np.sort(idx), [1, 2, 4, 5])  # > -inf, NaN never
        idx, _, _ = candidates(values.astype(dtype), 0.5, 100)
        np.testing.assert_array_equal(np.sort(idx), [4])  # > 0: not +0, not -0


def test_dense_candidates_keep_exact_top_k():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (30000, 9)).astype(np.float32)  # ~80% above the threshold
    flat = logits.reshape(-1)
    for dtype in (np.float32, np.float16):
        arr = logits.astype(dtype)
        values = arr.reshape(-1).astype(np.float64)
        k = 500
        idx, cls, got = candidates(arr, 0.3, k)
        assert idx.size == k
        kth = np.sort(values)[-k]
        assert set((idx * 9 + cls).tolist()) >= set(np.flatnonzero(values > kth).tolist())
        assert got.min() >= kth
        # The dense path did raise the threshold here (fewer indices, none of the top k lost).
        all_idx = pp._above(arr.reshape(-1), score_to_logit(0.3))
        fewer = pp._densely_above(arr.reshape(-1), score_to_logit(0.3), all_idx, k)
        assert k <= fewer.size < all_idx.size // 10
    # A sample that misleads the raised threshold (every 4th value large): the exact fallback.
    flat = rng.uniform(0, 1, 65536 * 4).astype(np.float32)
    flat[::4] = 10 + np.arange(65536, dtype=np.float32) * 1e-3
    all_idx = pp._above(flat, score_to_logit(0.3))
    assert pp._densely_above(flat, score_to_logit(0.3), all_idx, 5000) is all_idx
    idx, cls, got = candidates(flat.reshape(-1, 1), 0.3, 5000)
    np.testing.assert_array_equal(np.sort(idx), np.sort(np.argsort(flat)[-5000:]))


def test_batch_equals_per_image_and_inputs_untouched():
    problems = [realistic_problem("lite0", seed=s) for s in (1, 2)]
    anchors = problems[0][2]
    logits = np.stack([p[0] for p in problems])
    regression = np.stack([p[1] for p in problems])
    before = logits.copy(), regression.copy()
    logits.flags.writeable = regression.flags.writeable = False
    results = postprocess_batch(logits, regression, anchors, score_threshold=0.4)
    assert len(results) == 2
    for (c, r, _), got in zip(problems, results):
        assert_same(got, postprocess(c, r, anchors, score_threshold=0.4))
    np.testing.assert_array_equal(logits, before[0])
    np.testing.assert_array_equal(regression, before[1])
    # Lists of per-image arrays work too; a 2-D array is refused.
    assert len(postprocess_batch(list(logits), list(regression), anchors)) == 2
    with pytest.raises(ValueError, match=r"\[B, N, C\]"):
        postprocess_batch(logits[0], regression[0], anchors)


def test_non_contiguous_inputs():
    logits, regression, anchors = random_problem(4)
    wide = np.zeros((logits.shape[0], logits.shape[1] * 2), np.float32)
    wide[:, ::2] = logits
    strided = wide[:, ::2]
    assert not strided.flags.c_contiguous
    assert_same(postprocess(strided, regression, anchors), postprocess(logits, regression, anchors))


def test_clip_size_clips_before_nms():
    logits, regression, anchors = random_problem(2)
    boxes, _, _ = postprocess(logits, regression, anchors, clip_size=(100.0, 80.0))
    assert boxes.min() >= 0 and boxes[:, 0::2].max() <= 100 and boxes[:, 1::2].max() <= 80
    unclipped = postprocess(logits, regression, anchors)[0]
    assert unclipped.min() < 0  # the problem has boxes leaving the image


def test_validation_errors():
    logits, regression, anchors = random_problem(0, n=50)
    with pytest.raises(ValueError, match="postprocess_batch"):
        postprocess(logits[None], regression[None], anchors)
    with pytest.raises(ValueError, match="box_regression"):
        postprocess(logits, regression[:-1], anchors)
    with pytest.raises(ValueError, match="anchors"):
        postprocess(logits, regression, anchors[:-1])
    with pytest.raises(ValueError, match="score_threshold"):
        postprocess(logits, regression, anchors, score_threshold=1.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        postprocess(logits, regression, anchors, iou_threshold=-0.1)
    with pytest.raises(ValueError, match="method"):
        postprocess(logits, regression, anchors, nms_method="fast")
    with pytest.raises(ValueError, match="floating"):
        candidates(np.zeros((3, 2), np.int32), 0.3, 10)


def test_score_to_logit_and_sigmoid():
    assert score_to_logit(0.5) == 0.0
    assert math.isclose(score_to_logit(0.3), math.log(0.3 / 0.7))
    assert score_to_logit(0.0) == -math.inf and score_to_logit(1.0) == math.inf
    x = np.array([-1000.0, -20.0, 0.0, 3.0, 1000.0], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = sigmoid(x)
    assert s.dtype == np.float32
    with np.errstate(over="ignore"):
        expected = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(s, expected, rtol=1e-6, atol=1e-30)


# --- NMS implementations against each other ------------------------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_opencv_and_numpy_nms_agree(seed):
    rng = np.random.default_rng(100 + seed)
    k = int(rng.integers(1, 400))
    xy = rng.uniform(-50, 200, (k, 2))
    wh = rng.uniform(1, 80, (k, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    # Coarse scores: plenty of exact ties, which both must break by input order.
    scores = (rng.integers(1, 20, k) / 20).astype(np.float32)
    classes = rng.integers(0, 1 + seed % 5, k).astype(np.int32)
    for class_ids in (classes, None):
        for limit in (None, 5):
            a = nms_opencv(boxes, scores, class_ids, 0.5, limit)
            b = nms_numpy(boxes, scores, class_ids, 0.5, limit)
            np.testing.assert_array_equal(a, b)
            assert a.dtype == np.intp


def test_opencv_nms_classes_never_interact_even_with_negative_coordinates():
    # Identical big boxes reaching far left/up, of different classes: class-aware NMS keeps all.
    # (OpenCV separates classes by offsets of (largest coordinate + 1) = 11 here, which alone
    # would leave these boxes overlapping at IoU ~0.99.)
    boxes = np.array([[-2000, -2000, 10, 10], [-2000, -2000, 10, 10], [-1990, -1990, 5, 5]],
                     np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    classes = np.array([0, 1, 2], np.int32)
    np.testing.assert_array_equal(nms_opencv(boxes, scores, classes, 0.5), [0, 1, 2])
    np.testing.assert_array_equal(nms_opencv(boxes, scores, None, 0.5), [0])
    # Zero scores (threshold 0 and an underflowing sigmoid) fall back to numpy, nothing dropped.
    np.testing.assert_array_equal(nms(boxes, np.zeros(3, np.float32), classes, 0.5,
                                      method="opencv"), [0, 1, 2])


def test_auto_method_switches_on_candidate_count(monkeypatch):
    calls = []
    monkeypatch.setattr(pp, "nms_opencv", lambda *a: calls.append("opencv") or np.zeros(0, np.intp))
    monkeypatch.setattr(pp, "nms_numpy", lambda *a: calls.append("numpy") or np.zeros(0, np.intp))
    small = pp.OPENCV_NMS_MAX_CANDIDATES
    for k in (small, small + 1):
        nms(np.zeros((k, 4), np.float32), np.ones(k, np.float32), None, 0.5)
    assert calls == ["opencv", "numpy"]
