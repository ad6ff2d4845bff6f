"""edgedet.anchors against effdet (the reference) and against itself."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgedet.anchors import (  # noqa: E402
    MAX_LOG_SCALE,
    anchors_per_level,
    decode_boxes,
    encode_boxes,
    generate_anchors,
)
from edgedet.config import get_config  # noqa: E402

VARIANTS = ["d0", "d3", "lite0", "lite3x", "d7x"]


@pytest.fixture(scope="module")
def effdet():
    import torch

    from effdet_ref import import_effdet

    module = import_effdet()
    from effdet.anchors import Anchors, decode_box_outputs
    from effdet.config import get_efficientdet_config
    from effdet.object_detection import BoxList, FasterRcnnBoxCoder

    class Ref:
        pass

    ref = Ref()
    ref.module, ref.torch = module, torch
    ref.Anchors, ref.decode_box_outputs = Anchors, decode_box_outputs
    ref.get_config, ref.BoxList, ref.FasterRcnnBoxCoder = get_efficientdet_config, BoxList, FasterRcnnBoxCoder
    return ref


def _yxyx_to_xyxy(a: np.ndarray) -> np.ndarray:
    return a[..., [1, 0, 3, 2]]


def _effdet_anchors_xyxy(effdet, name: str) -> np.ndarray:
    cfg = effdet.get_config(f"tf_efficientdet_{name}")
    return _yxyx_to_xyxy(effdet.Anchors.from_config(cfg).boxes.numpy())


@pytest.mark.parametrize("name", VARIANTS)
def test_anchor_config_matches_effdet(effdet, name):
    ours = get_config(name)
    ref = effdet.get_config(f"tf_efficientdet_{name}")
    assert ours.anchors.anchor_scale == ref.anchor_scale
    assert (ours.min_level, ours.max_level) == (ref.min_level, ref.max_level)
    assert ours.anchors.num_scales == ref.num_scales
    assert [tuple(r) for r in ref.aspect_ratios] == list(ours.anchors.aspect_ratios)
    assert tuple(ref.image_size) == (ours.image_size, ours.image_size)


@pytest.mark.parametrize("name", VARIANTS)
def test_anchors_equal_effdet(effdet, name):
    config = get_config(name)
    ours = generate_anchors(config)
    ref = _effdet_anchors_xyxy(effdet, name)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape == (config.num_anchors(), 4)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-4)


def test_d7x_has_p8_and_lite0_fractional_stride():
    d7x = get_config("d7x")
    counts = anchors_per_level(d7x)
    assert len(counts) == 6  # P3..P8
    assert counts[-1] == 6 * 6 * 9  # 1536 -> 192, 96, 48, 24, 12, 6
    a = generate_anchors(d7x)
    p8 = a[-counts[-1]:]
    # P8: stride 256, first cell center (128, 128), anchor 0 is square of side 4 * 256.
    np.testing.assert_allclose(p8[0], [128 - 512, 128 - 512, 128 + 512, 128 + 512])
    # Lite0 at 320: P7 has 3 cells (ceil halving), so its stride is 320 / 3, not 128.
    lite0 = get_config("lite0")
    a = generate_anchors(lite0)
    p7 = a[-anchors_per_level(lite0)[-1]:].reshape(3, 3, 9, 4)
    centers_x = (p7[0, :, 0, 0] + p7[0, :, 0, 2]) / 2
    np.testing.assert_allclose(centers_x, [320 / 6, 160, 320 * 5 / 6], rtol=1e-6)


@pytest.mark.parametrize("name", VARIANTS + ["d7", "lite4"])
def test_num_anchors_and_per_level(name):
    config = get_config(name)
    anchors = generate_anchors(config)
    counts = anchors_per_level(config)
    assert anchors.shape == (config.num_anchors(), 4)
    assert sum(counts) == config.num_anchors()
    assert len(counts) == config.num_levels
    assert all(c == s * s * config.anchors.anchors_per_cell for c, s in zip(counts, config.feature_sizes()))


def test_row_order():
    """level, then y, then x, then scale (outer) x aspect (inner)."""
    config = get_config("d0")
    a = generate_anchors(config).reshape(-1)[: 64 * 64 * 9 * 4].reshape(64, 64, 3, 3, 4)  # P3
    w = a[..., 2] - a[..., 0]
    h = a[..., 3] - a[..., 1]
    cx = (a[..., 0] + a[..., 2]) / 2
    cy = (a[..., 1] + a[..., 3]) / 2
    np.testing.assert_allclose(cx[0, :, 0, 0], 4 + 8 * np.arange(64), atol=1e-4)  # x varies along axis 1
    np.testing.assert_allclose(cy[:, 0, 0, 0], 4 + 8 * np.arange(64), atol=1e-4)  # y along axis 0
    base = 4.0 * 8  # anchor_scale * stride
    for s in range(3):
        for r, (fw, fh) in enumerate(config.anchors.aspect_ratios):
            np.testing.assert_allclose(w[0, 0, s, r], base * 2 ** (s / 3) * fw, rtol=1e-6)
            np.testing.assert_allclose(h[0, 0, s, r], base * 2 ** (s / 3) * fh, rtol=1e-6)


def test_anchors_cached_and_read_only():
    config = get_config("d0")
    a = generate_anchors(config)
    assert generate_anchors(config) is a
    assert generate_anchors(config, config.image_size) is a
    # Same anchor fields under another config object share the cache entry.
    assert generate_anchors(config.with_(num_classes=3)) is a
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0] = 1.0
    other = generate_anchors(config, 256)
    assert other is not a and other.shape == (config.num_anchors(256), 4)
    assert other[:, 2:].max() < a[:, 2:].max()


def test_anchors_at_custom_size_match_effdet(effdet):
    """A non-default size, not divisible by 128 (fractional strides at high levels)."""
    config = get_config("d0")
    ours = generate_anchors(config, 400)
    ref = effdet.Anchors(3, 7, 3, list(config.anchors.aspect_ratios), 4.0, (400, 400)).boxes.numpy()
    np.testing.assert_allclose(ours, _yxyx_to_xyxy(ref), rtol=1e-6, atol=1e-4)


def test_invalid_image_size():
    with pytest.raises(ValueError):
        generate_anchors(get_config("d0"), 0)


@pytest.mark.parametrize("name", ["d0", "lite0"])
def test_decode_equals_effdet(effdet, name):
    torch = effdet.torch
    anchors = generate_anchors(get_config(name))
    rng = np.random.default_rng(0)
    rel = rng.normal(0.0, 1.0, size=anchors.shape).astype(np.float32)
    rel[:, 2:] = np.clip(rel[:, 2:], -3.0, 3.0)
    anchors_yxyx = torch.from_numpy(np.ascontiguousarray(anchors[:, [1, 0, 3, 2]]))
    ref = effdet.decode_box_outputs(torch.from_numpy(rel), anchors_yxyx, output_xyxy=True).numpy()
    ours = decode_boxes(rel, anchors)
    assert ours.dtype == np.float32 and ours.shape == anchors.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


def test_decode_zero_regression_is_identity():
    anchors = generate_anchors(get_config("lite0"))
    np.testing.assert_allclose(decode_boxes(np.zeros_like(anchors), anchors), anchors, rtol=1e-6, atol=1e-4)


def test_decode_known_values():
    anchors = np.array([[10.0, 20.0, 30.0, 60.0]], dtype=np.float32)  # cx 20, cy 40, w 20, h 40
    rel = np.array([[0.5, -0.25, math.log(2.0), math.log(0.5)]], dtype=np.float32)  # ty tx th tw
    # cy = 40 + 0.5 * 40 = 60, cx = 20 - 0.25 * 20 = 15, h = 80, w = 10.
    np.testing.assert_allclose(decode_boxes(rel, anchors), [[10.0, 20.0, 20.0, 100.0]], rtol=1e-6)


def test_batch_decode_broadcasts():
    anchors = generate_anchors(get_config("lite0"))
    rng = np.random.default_rng(1)
    rel = rng.normal(0.0, 0.5, size=(3, *anchors.shape)).astype(np.float32)
    out = decode_boxes(rel, anchors)
    assert out.shape == (3, *anchors.shape) and out.dtype == np.float32
    for b in range(3):
        np.testing.assert_array_equal(out[b], decode_boxes(rel[b], anchors))
    # A subset of rows (the runtime's usage after thresholding), float64 input.
    idx = np.array([5, 17, len(anchors) - 1])
    sub = decode_boxes(rel[1, idx].astype(np.float64), anchors[idx])
    assert sub.dtype == np.float32
    np.testing.assert_allclose(sub, out[1, idx], rtol=1e-6)


def test_decode_overflow_guard():
    anchors = np.array([[0.0, 0.0, 16.0, 16.0]] * 3, dtype=np.float32)
    rel = np.array(
        [[0, 0, 1e4, 1e4], [0, 0, MAX_LOG_SCALE - 1e-3, 0], [0, 0, 100.0, -100.0]], dtype=np.float32
    )
    with np.errstate(over="raise"):
        out = decode_boxes(rel, anchors)
    assert np.isfinite(out).all()
    side = 16.0 * 1000.0
    np.testing.assert_allclose(out[0], [8 - side / 2, 8 - side / 2, 8 + side / 2, 8 + side / 2], rtol=1e-5)
    # Just below the clip nothing changes.
    h = 16.0 * math.exp(MAX_LOG_SCALE - 1e-3)
    np.testing.assert_allclose(out[1], [0, 8 - h / 2, 16, 8 + h / 2], rtol=1e-5)
    # Very negative log sizes give an empty box at the anchor center, not NaN.
    np.testing.assert_allclose(out[2, [0, 2]], [8.0, 8.0], atol=1e-4)


def test_decode_rejects_bad_shapes():
    with pytest.raises(ValueError):
        decode_boxes(np.zeros((5, 3), np.float32), np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError):
        decode_boxes(np.zeros((5, 4), np.float32), np.zeros((4, 4), np.float32))


def _random_boxes(rng, anchors: np.ndarray) -> np.ndarray:
    """Boxes near the anchors: centers shifted and sizes scaled by up to ~2x."""
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    cx = (anchors[:, 0] + anchors[:, 2]) / 2 + rng.uniform(-0.5, 0.5, len(anchors)) * w
    cy = (anchors[:, 1] + anchors[:, 3]) / 2 + rng.uniform(-0.5, 0.5, len(anchors)) * h
    bw = w * np.exp(rng.uniform(-0.7, 0.7, len(anchors)))
    bh = h * np.exp(rng.uniform(-0.7, 0.7, len(anchors)))
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(2)
    anchors = generate_anchors(get_config("d0"))
    boxes = _random_boxes(rng, anchors)
    codes = encode_boxes(boxes, anchors)
    assert codes.shape == anchors.shape and codes.dtype == np.float32
    np.testing.assert_allclose(decode_boxes(codes, anchors), boxes, rtol=1e-5, atol=1e-3)
    # And the other way round.
    rel = rng.normal(0.0, 0.5, size=anchors.shape).astype(np.float32)
    np.testing.assert_allclose(encode_boxes(decode_boxes(rel, anchors), anchors), rel, rtol=1e-4, atol=1e-4)
    # An anchor encodes to zeros.
    np.testing.assert_allclose(encode_boxes(anchors, anchors), 0.0, atol=1e-6)


def test_encode_equals_effdet(effdet):
    torch = effdet.torch
    rng = np.random.default_rng(3)
    anchors = generate_anchors(get_config("lite0"))
    boxes = _random_boxes(rng, anchors)
    coder = effdet.FasterRcnnBoxCoder()
    ref = coder.encode(
        effdet.BoxList(torch.from_numpy(np.ascontiguousarray(boxes[:, [1, 0, 3, 2]]))),
        effdet.BoxList(torch.from_numpy(np.ascontiguousarray(anchors[:, [1, 0, 3, 2]]))),
    ).numpy()
    np.testing.assert_allclose(encode_boxes(boxes, anchors), ref, rtol=1e-4, atol=1e-5)


def test_anchors_module_is_torch_free():
    code = (
        "import sys\n"
        "from edgedet.anchors import decode_boxes, generate_anchors\n"
        "from edgedet.config import get_config\n"
        "a = generate_anchors(get_config('d0'))\n"
        "decode_boxes(a[:0] * 0, a[:0])\n"
        "bad = [m for m in ('torch', 'cv2') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
