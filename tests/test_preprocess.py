"""edgedet.preprocess: frame validation, letterbox geometry, color order, layout, normalization."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgedet.config import IMAGENET, LITE
from edgedet.manifest import InputSpec, NormalizationSpec, Quantization
from edgedet.preprocess import (
    MAX_FRAME_PIXELS,
    InputError,
    Letterbox,
    canvas_batch,
    letterbox,
    normalization_affine,
    prepare,
    preprocess,
    validate_frame,
)

MEAN, STD = IMAGENET.mean, IMAGENET.std


def frame_of(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def plain_preprocess(frame, size, mean, std, *, layout="NCHW", rgb=False):
    """The obvious float64 computation, for comparison (padding: the mean color, frame order)."""
    fill_rgb = tuple(int(round(m)) for m in mean)
    canvas, info = letterbox(frame, size, fill=fill_rgb if rgb else fill_rgb[::-1])
    image = canvas.astype(np.float64)
    if not rgb:
        image = image[..., ::-1]
    out = (image - np.asarray(mean)) / np.asarray(std)
    return (out.transpose(2, 0, 1) if layout == "NCHW" else out)[None], info


# --- validation ------------------------------------------------------------------------------------

def _huge_frame() -> np.ndarray:
    # 20000 x 6000 x 3 = 120 M pixels (> MAX_FRAME_PIXELS) viewing a 3-byte buffer.
    return np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), shape=(20000, 6000, 3),
                                           strides=(0, 0, 1), writeable=False)


@pytest.mark.parametrize("bad, match", [
    (None, "frame is None"),
    ([[1, 2, 3]], "numpy array"),
    (np.zeros((0, 0, 3), np.uint8), "empty"),
    (np.zeros((0,), np.uint8), "empty"),
    (np.zeros((48, 64), np.uint8), r"grayscale.*COLOR_GRAY2BGR"),
    (np.zeros((48, 64, 1), np.uint8), r"grayscale.*COLOR_GRAY2BGR"),
    (np.zeros((48, 64, 4), np.uint8), r"4 channels.*COLOR_BGRA2BGR"),
    (np.zeros((48, 64, 2), np.uint8), "3 color channels"),
    (np.zeros((48, 64, 3), np.float32), r"uint8.*floats in 0\.\.1"),
    (np.zeros((48, 64, 3), np.uint16), "must be uint8, got uint16"),
    (np.zeros((2, 48, 64, 3), np.uint8), r"3 dimensions.*pass a list of frames"),
    (np.zeros((10,), np.uint8), "3 dimensions"),
    (_huge_frame(), r"exceeds the 100,000,000-pixel limit"),
])
def test_bad_frames_raise_input_error_with_a_hint(bad, match):
    with pytest.raises(InputError, match=match):
        validate_frame(bad)
    # Through preprocess too (a 4-D array is a batch there, so wrap the bad frame in a list).
    with pytest.raises(InputError, match=match):
        preprocess([bad], 64, MEAN, STD)
    assert issubclass(InputError, ValueError)


def test_huge_frame_is_cheap_and_over_the_limit():
    huge = _huge_frame()
    assert huge.shape[0] * huge.shape[1] > MAX_FRAME_PIXELS
    assert huge.strides[:2] == (0, 0)  # every pixel is the same 3 bytes: nothing big allocated


def test_a_bad_frame_in_a_batch_and_an_empty_batch():
    with pytest.raises(InputError, match="grayscale"):
        preprocess([frame_of(48, 64), np.zeros((48, 64), np.uint8)], 64, MEAN, STD)
    with pytest.raises(InputError, match="no frames"):
        preprocess([], 64, MEAN, STD)
    with pytest.raises(InputError, match="no frames"):
        preprocess(np.zeros((0, 48, 64, 3), np.uint8), 64, MEAN, STD)


def test_bad_arguments_raise_value_error():
    frame = frame_of(48, 64)
    with pytest.raises(ValueError, match="layout"):
        preprocess(frame, 64, MEAN, STD, layout="CHW")
    with pytest.raises(ValueError, match="std"):
        preprocess(frame, 64, MEAN, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="mean and std"):
        preprocess(frame, 64, (1.0, 2.0), STD)
    with pytest.raises(ValueError, match="size"):
        preprocess(frame, 0, MEAN, STD)


def test_valid_frames_pass_through_unchanged():
    frame = frame_of(48, 64)
    assert validate_frame(frame) is frame
    view = frame_of(96, 128)[::2, ::2]  # a non-contiguous view is a valid frame
    batch, _ = preprocess(view, 64, MEAN, STD)
    expected, _ = preprocess(np.ascontiguousarray(view), 64, MEAN, STD)
    np.testing.assert_array_equal(batch, expected)


# --- letterbox geometry --------------------------------------------------------------------------

@pytest.mark.parametrize("shape, size", [((720, 1280), 512), ((1280, 720), 512), ((480, 640), 320),
                                         ((100, 150), 320), ((512, 512), 512), ((333, 777), 384)])
def test_box_round_trip_through_the_letterbox(shape, size):
    """A box drawn on the frame, found in the model input, mapped back with Letterbox.to_frame."""
    h, w = shape
    frame = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = int(w * 0.3), int(h * 0.4), int(w * 0.7), int(h * 0.9)
    frame[y1:y2, x1:x2] = 255
    batch, (info,) = preprocess(frame, size, MEAN, STD)
    assert isinstance(info, Letterbox) and (info.frame_height, info.frame_width) == (h, w)
    assert info.scale == pytest.approx(min(size / h, size / w))
    bright = batch[0, 0] > (127 - MEAN[0]) / STD[0]  # the white box, in model-input pixels
    ys, xs = np.nonzero(bright)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    back = info.to_frame(found.copy())
    tolerance = 1.0 / info.scale + 1.0  # one model pixel, in frame pixels
    np.testing.assert_allclose(back[0], [x1, y1, x2, y2], atol=tolerance)


def test_letterbox_is_top_left_with_mean_padding_that_normalizes_to_zero():
    frame = np.full((720, 1280, 3), 200, np.uint8)
    batch, (info,) = preprocess(frame, 512, MEAN, STD, layout="NHWC")
    content_h = round(720 * 512 / 1280)  # 288
    np.testing.assert_allclose(batch[0, :content_h], ((200 - np.array(MEAN)) / STD)[None, None].repeat(
        512, 1).repeat(content_h, 0), rtol=1e-5)
    # Padding is the mean color rounded to uint8, so it normalizes to (round(mean) - mean) / std ~ 0.
    pad = (np.rint(MEAN) - np.asarray(MEAN)) / np.asarray(STD)
    assert np.abs(pad).max() < 0.01
    np.testing.assert_allclose(batch[0, content_h:], np.broadcast_to(pad, (512 - content_h, 512, 3)),
                               rtol=1e-4, atol=1e-6)
    # Portrait: padding on the right.
    batch, _ = preprocess(np.full((1280, 720, 3), 200, np.uint8), 512, MEAN, STD, layout="NHWC")
    np.testing.assert_allclose(batch[0, :, 288:], np.broadcast_to(pad, (512, 224, 3)), rtol=1e-4, atol=1e-6)


def test_to_frame_clips_to_the_frame():
    info = Letterbox(scale=0.5, frame_height=100, frame_width=200)
    boxes = np.array([[-10, -10, 50, 30], [90, 40, 120, 80]], np.float32)
    out = info.to_frame(boxes)
    assert out is boxes  # in place
    np.testing.assert_allclose(out, [[0, 0, 100, 60], [180, 80, 200, 100]])


def test_letterbox_into_a_reused_buffer_clears_old_content():
    out = np.full((64, 64, 3), 77, np.uint8)
    canvas, info = letterbox(np.zeros((32, 64, 3), np.uint8), 64, out=out)
    assert canvas is out
    np.testing.assert_array_equal(out, 0)


# --- color order, layout, dtype, values ----------------------------------------------------------

@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_bgr_and_rgb_inputs(layout):
    bgr = frame_of(360, 640)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    from_bgr, _ = preprocess(bgr, 256, MEAN, STD, layout=layout)
    from_rgb, _ = preprocess(rgb, 256, MEAN, STD, layout=layout, rgb=True)
    np.testing.assert_array_equal(from_bgr, from_rgb)
    # With channel-symmetric normalization, rgb=True on the same frame swaps the channels.
    same, _ = preprocess(bgr, 256, LITE.mean, LITE.std, layout=layout)
    swapped, _ = preprocess(bgr, 256, LITE.mean, LITE.std, layout=layout, rgb=True)
    axis = 1 if layout == "NCHW" else 3
    np.testing.assert_array_equal(same, np.flip(swapped, axis=axis))
    assert not np.array_equal(same, swapped)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_nchw_equals_nhwc_transposed(dtype):
    frame = frame_of(720, 1280)
    nchw, _ = preprocess(frame, 320, MEAN, STD, layout="NCHW", dtype=dtype)
    nhwc, _ = preprocess(frame, 320, MEAN, STD, layout="NHWC", dtype=dtype)
    assert nchw.shape == (1, 3, 320, 320) and nhwc.shape == (1, 320, 320, 3)
    assert nchw.dtype == nhwc.dtype == dtype
    assert nchw.flags.c_contiguous and nhwc.flags.c_contiguous
    tolerance = 1e-6 if dtype == np.float32 else 4e-3  # float rounding only (1 ulp of float16)
    np.testing.assert_allclose(nchw.transpose(0, 2, 3, 1).astype(np.float32), nhwc.astype(np.float32),
                               rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("norm", [IMAGENET, LITE])
def test_values_equal_the_plain_computation(layout, norm):
    frame = frame_of(480, 640, seed=2)
    want, _ = plain_preprocess(frame, 384, norm.mean, norm.std, layout=layout)
    got32, _ = preprocess(frame, 384, norm.mean, norm.std, layout=layout)
    np.testing.assert_allclose(got32, want, rtol=1e-6, atol=1e-6)
    got16, _ = preprocess(frame, 384, norm.mean, norm.std, layout=layout, dtype=np.float16)
    assert got16.dtype == np.float16
    np.testing.assert_allclose(got16.astype(np.float64), want, rtol=1e-3, atol=1e-3)
    got64, _ = preprocess(frame, 384, norm.mean, norm.std, layout=layout, dtype=np.float64)
    np.testing.assert_allclose(got64, want, rtol=1e-6, atol=1e-6)


def test_other_dtypes_are_cast_from_float32():
    frame = frame_of(64, 64)
    raw, _ = preprocess(frame, 64, (0, 0, 0), (1, 1, 1), dtype=np.uint8)  # raw RGB pixels, e.g. INT8
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw[0], frame[..., ::-1].transpose(2, 0, 1))


def test_batches():
    frames = [frame_of(720, 1280, 1), frame_of(300, 200, 2), frame_of(512, 512, 3)]
    batch, infos = preprocess(frames, 320, MEAN, STD)
    assert batch.shape == (3, 3, 320, 320) and len(infos) == 3
    for i, frame in enumerate(frames):
        one, (info,) = preprocess(frame, 320, MEAN, STD)
        np.testing.assert_array_equal(batch[i], one[0])
        assert info == infos[i]
    # A 4-D array is a batch of same-sized frames.
    stack = np.stack([frame_of(240, 320, s) for s in range(2)])
    batch, infos = preprocess(stack, 128, MEAN, STD, layout="NHWC")
    assert batch.shape == (2, 128, 128, 3) and len(infos) == 2
    np.testing.assert_array_equal(batch[1], preprocess(stack[1], 128, MEAN, STD, layout="NHWC")[0][0])


def test_resize_interpolation_is_area_when_shrinking():
    """Pinned: shrinking averages (INTER_AREA), so a fine checkerboard becomes flat grey."""
    checker = (np.indices((512, 512)).sum(0) % 2 * 255).astype(np.uint8)
    frame = np.repeat(checker[..., None], 3, axis=2)
    canvas, _ = letterbox(frame, 256)
    assert np.abs(canvas.astype(int) - 127.5).max() <= 1
    np.testing.assert_array_equal(canvas, cv2.resize(frame, (256, 256), interpolation=cv2.INTER_AREA))


def test_fractional_shrink_still_averages():
    """1280x720 into 512 (factor 2.5): INTER_AREA by 2 (its fast path), then bilinear by 1.25, so a
    fine checkerboard still becomes flat grey; bilinear alone would sample it into stripes."""
    checker = (np.indices((720, 1280)).sum(0) % 2 * 255).astype(np.uint8)
    frame = np.repeat(checker[..., None], 3, axis=2)
    canvas, box = letterbox(frame, 512)
    assert box.scale == pytest.approx(0.4)
    image = canvas[:288].astype(int)
    assert np.abs(image - 127.5).max() <= 2, np.abs(image - 127.5).max()
    aliased = cv2.resize(frame, (512, 288), interpolation=cv2.INTER_LINEAR).astype(int)
    assert np.abs(aliased - 127.5).max() > 20  # stripes of 96 and 159: what the two-step shrink avoids


# --- the frame canvas, and prepare() for every kind of artifact input -----------------------------

NORM = NormalizationSpec.from_config(IMAGENET)


def spec(**kwargs) -> InputSpec:
    base = dict(name="images", shape=(1, 3, 320, 320), layout="NCHW", dtype="float32", normalization=NORM)
    return InputSpec(**{**base, **kwargs})


def test_canvas_batch_is_the_letterbox_preprocess_normalizes():
    """The uint8 canvas of a frame-input artifact is the letterbox preprocess() starts from:
    normalizing it (BGR -> RGB, (x - mean) / std, NCHW) gives preprocess()'s tensor."""
    frames = [frame_of(720, 1280, 1), frame_of(300, 200, 2)]
    canvas, infos = canvas_batch(frames, 320, MEAN)
    assert canvas.shape == (2, 320, 320, 3) and canvas.dtype == np.uint8 and canvas.flags.c_contiguous
    want, want_infos = preprocess(frames, 320, MEAN, STD)
    assert infos == want_infos
    got = (canvas[..., ::-1].astype(np.float64) - np.asarray(MEAN)) / np.asarray(STD)
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-5)
    # Padded with the mean colour, in the canvas's (BGR) order.
    np.testing.assert_array_equal(canvas[0, 300:], np.broadcast_to(np.rint(MEAN)[::-1], (20, 320, 3)))


def test_canvas_colour_orders():
    bgr = frame_of(240, 320)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    as_bgr, _ = canvas_batch(bgr, 128, MEAN)
    np.testing.assert_array_equal(canvas_batch(rgb, 128, MEAN, rgb=True)[0], as_bgr)  # RGB frames swapped
    as_rgb, _ = canvas_batch(bgr, 128, MEAN, color="RGB")
    np.testing.assert_array_equal(as_rgb, as_bgr[..., ::-1])
    np.testing.assert_array_equal(canvas_batch(rgb, 128, MEAN, color="RGB", rgb=True)[0], as_rgb)
    with pytest.raises(ValueError, match="color must be 'BGR' or 'RGB'"):
        canvas_batch(bgr, 128, MEAN, color="YUV")
    with pytest.raises(InputError, match="grayscale"):
        canvas_batch(np.zeros((48, 64), np.uint8), 128, MEAN)
    with pytest.raises(InputError, match="no frames"):
        canvas_batch([], 128, MEAN)


def test_prepare_follows_the_input_spec():
    frame = frame_of(480, 640, seed=4)
    tensor, _ = preprocess(frame, 320, MEAN, STD)
    np.testing.assert_array_equal(prepare(frame, spec())[0], tensor)
    nhwc16, _ = prepare(frame, spec(shape=(1, 320, 320, 3), layout="NHWC", dtype="float16"))
    assert nhwc16.dtype == np.float16 and nhwc16.shape == (1, 320, 320, 3)
    q = Quantization(scale=0.03, zero_point=3)  # covers the normalized range (-2.1..2.7)
    quantized, _ = prepare(frame, spec(shape=(1, 320, 320, 3), layout="NHWC", dtype="int8", quantization=q))
    assert quantized.dtype == np.int8
    np.testing.assert_allclose((quantized.astype(np.float32) - 3) * 0.03, tensor.transpose(0, 2, 3, 1), atol=0.016)
    frames = spec(shape=(1, 320, 320, 3), layout="NHWC", dtype="uint8", color="BGR", preprocessing="model")
    canvas, (info,) = prepare(frame, frames)
    np.testing.assert_array_equal(canvas, canvas_batch(frame, 320, MEAN)[0])
    assert info.scale == 0.5


def test_normalization_affine_is_what_preprocess_applies():
    scale, shift = normalization_affine(MEAN, STD)
    assert scale.dtype == shift.dtype == np.float32
    np.testing.assert_allclose(100 * scale + shift, (100 - np.asarray(MEAN)) / STD, rtol=1e-6)
    with pytest.raises(ValueError, match="std != 0"):
        normalization_affine(MEAN, (1, 0, 1))
