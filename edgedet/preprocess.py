"""Frames to network input: validation, letterbox resize, color order, normalization, layout.

One implementation for every consumer — the runtime's backends, the converters' calibration and
verification, training and evaluation — so an artifact is always fed exactly as it was calibrated.
:func:`prepare` is the one place that turns frames into an artifact's input, as its manifest's
``input`` says: a normalized tensor (:func:`preprocess`, then quantized for integer inputs), or
for an artifact that preprocesses inside its graph the letterboxed uint8 canvas
(:func:`canvas_batch`). numpy and OpenCV only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import cv2
import numpy as np

from edgedet.quantization import quantize

if TYPE_CHECKING:
    from edgedet.manifest import InputSpec

Layout = Literal["NCHW", "NHWC"]
#: Frames larger than this many pixels are refused: almost surely a bug upstream (a mosaic, a
#: raw buffer of the wrong shape), and resizing them would stall a real-time loop.
MAX_FRAME_PIXELS = 100_000_000


class InputError(ValueError):
    """A frame the detector cannot take; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Letterbox:
    """How a frame was placed in the square model input: scaled by ``scale``, top-left aligned."""

    scale: float
    frame_height: int
    frame_width: int

    def to_frame(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map boxes from model-input pixels back to frame pixels (in place), clipped to the frame."""
        boxes_xyxy /= self.scale
        np.clip(boxes_xyxy[..., 0::2], 0, self.frame_width, out=boxes_xyxy[..., 0::2])
        np.clip(boxes_xyxy[..., 1::2], 0, self.frame_height, out=boxes_xyxy[..., 1::2])
        return boxes_xyxy


def validate_frame(frame: object) -> np.ndarray:
    """Check that ``frame`` is an H×W×3 uint8 image and return it; raise :class:`InputError` if not."""
    if frame is None:
        raise InputError("frame is None: the camera or decoder returned no image (check that it opened "
                         "and that read() succeeded before calling the detector)")
    if not isinstance(frame, np.ndarray):
        raise InputError(f"frame must be a numpy array (H×W×3 uint8), got {type(frame).__name__}")
    if frame.size == 0:
        raise InputError(f"frame is empty (shape {frame.shape}): nothing to detect in")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        raise InputError(f"frame is grayscale (shape {frame.shape}); convert it with "
                         "cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)")
    if frame.ndim != 3:
        raise InputError(f"frame must have 3 dimensions H×W×3, got shape {frame.shape}"
                         + (" (a batch? pass a list of frames)" if frame.ndim == 4 else ""))
    if frame.shape[2] == 4:
        raise InputError(f"frame has 4 channels (shape {frame.shape}, BGRA/RGBA); drop alpha with "
                         "cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)")
    if frame.shape[2] != 3:
        raise InputError(f"frame must have 3 color channels, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        hint = (" (floats in 0..1? use (frame * 255).round().astype(np.uint8))"
                if np.issubdtype(frame.dtype, np.floating) else "")
        raise InputError(f"frame must be uint8, got {frame.dtype}{hint}")
    if frame.shape[0] * frame.shape[1] > MAX_FRAME_PIXELS:
        raise InputError(f"frame of {frame.shape[1]}×{frame.shape[0]} pixels exceeds the "
                         f"{MAX_FRAME_PIXELS:,}-pixel limit; resize it before detection")
    return frame


def letterbox(frame: np.ndarray, size: int, out: np.ndarray | None = None,
              fill: tuple[int, int, int] = (0, 0, 0)) -> tuple[np.ndarray, Letterbox]:
    """Resize ``frame`` to fit a ``size``×``size`` square, keeping its aspect, top-left aligned and
    padded at the bottom/right with ``fill`` (in the frame's channel order), as the reference
    does. Writes into ``out`` (size×size×3 uint8) if given."""
    h, w = frame.shape[:2]
    scale = min(size / h, size / w)
    new_h, new_w = min(size, round(h * scale)), min(size, round(w * scale))
    if out is None:
        out = np.empty((size, size, 3), dtype=np.uint8)
    out[new_h:] = fill
    out[:new_h, new_w:] = fill
    if (new_h, new_w) == (h, w):
        out[:h, :w] = frame
    elif scale < 1:
        shrink(frame, out[:new_h, :new_w])
    else:
        cv2.resize(frame, (new_w, new_h), dst=out[:new_h, :new_w], interpolation=cv2.INTER_LINEAR)
    return out, Letterbox(scale, h, w)


def shrink(frame: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Shrink ``frame`` into ``dst`` (a smaller H×W×3 uint8 view): INTER_AREA by the smallest whole
    factor k that divides the frame's sides and leaves less than 2 (OpenCV's fast path for whole
    factors averages k×k blocks), then INTER_LINEAR by the rest, where bilinear still sees every
    pixel. A whole overall factor is INTER_AREA alone.

    INTER_AREA alone takes a slow general path for fractional factors (1280×720 to 512 wide is
    2.5); bilinear alone skips pixels, i.e. aliases, for factors of 2 and more. Chosen by
    ``benchmarks/resize.py`` (time, parity with INTER_AREA, mAP)."""
    h, w = dst.shape[:2]
    fh, fw = frame.shape[:2]
    if fh == 2 * h and fw == 2 * w or fh < 2 * h or fw < 2 * w:  # whole factor 2, or under 2
        interpolation = cv2.INTER_AREA if fh >= 2 * h else cv2.INTER_LINEAR
        return cv2.resize(frame, (w, h), dst=dst, interpolation=interpolation)
    if fh % h == 0 and fw % w == 0 and fh // h == fw // w:  # a whole factor: INTER_AREA's fast path
        return cv2.resize(frame, (w, h), dst=dst, interpolation=cv2.INTER_AREA)
    # The smallest whole factor k that divides both sides (so INTER_AREA stays on its fast path,
    # fastest at 2) and leaves bilinear less than 2 to go; none (odd sizes): the general path.
    factor = min(fh / h, fw / w)
    for k in range(2, int(factor) + 1):
        if fh % k == 0 and fw % k == 0 and factor / k < 2:
            small = cv2.resize(frame, (fw // k, fh // k), interpolation=cv2.INTER_AREA)
            return cv2.resize(small, (w, h), dst=dst, interpolation=cv2.INTER_LINEAR)
    return cv2.resize(frame, (w, h), dst=dst, interpolation=cv2.INTER_AREA)


def normalization_affine(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(pixel - mean) / std`` as ``pixel * scale + shift``: ``scale = 1/std`` and ``shift =
    -mean/std`` per RGB channel, float32 (rounded as the float32 reference computation rounds them).
    What :func:`preprocess` computes, and what an artifact that normalizes inside its graph folds
    into its front end (``converters.frame_input``).

    Raises:
        ValueError: ``mean`` or ``std`` is not 3 numbers, or a std is 0.
    """
    std_arr = np.asarray(std, dtype=np.float64).reshape(-1)
    mean_arr = np.asarray(mean, dtype=np.float64).reshape(-1)
    if std_arr.shape != (3,) or mean_arr.shape != (3,) or not np.all(std_arr != 0):
        raise ValueError(f"mean and std must be 3 numbers (RGB) with std != 0, got {mean!r}, {std!r}")
    scale32 = (1.0 / std_arr).astype(np.float32)
    shift32 = (-mean_arr.astype(np.float32) * scale32).astype(np.float32)
    return scale32, shift32


#: OpenCV depth codes of the float dtypes :func:`preprocess` writes directly (others go via float32).
_CV_DEPTH = {np.dtype(np.float32): cv2.CV_32F, np.dtype(np.float16): cv2.CV_16F,
             np.dtype(np.float64): cv2.CV_64F}


def _normalize_into(image: np.ndarray, dst: np.ndarray, scale: tuple[float, ...],
                    shift: tuple[float, ...], layout: Layout, bgr: bool, tmp: np.ndarray | None) -> None:
    """``dst = image[RGB] * scale + shift`` (per RGB channel) from a uint8 S×S×3 ``image``.

    ``dst`` is one sample of the batch, 3×S×S (NCHW) or S×S×3 (NHWC), of a dtype in ``_CV_DEPTH``.
    OpenCV does the color swap, the uint8 → float conversion and the multiply-add in one pass per
    plane, without numpy's temporaries. ``tmp`` is a float32 S×S×3 scratch needed only for NHWC
    output that is not float32.
    """
    depth = _CV_DEPTH[dst.dtype]
    if layout == "NCHW":
        planes = cv2.split(image)  # three contiguous uint8 planes, in the image's channel order
        for c in range(3):
            src = planes[2 - c] if bgr else planes[c]
            # src * scale + src * 0 + shift, computed in float and written into the batch plane.
            cv2.addWeighted(src, scale[c], src, 0.0, shift[c], dst=dst[c], dtype=depth)
        return
    if bgr:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place on the small canvas
    sc, sh = (*scale, 0.0), (*shift, 0.0)
    if depth == cv2.CV_32F:
        cv2.multiply(image, sc, dst=dst, dtype=cv2.CV_32F)
        cv2.add(dst, sh, dst=dst)
    else:
        cv2.multiply(image, sc, dst=tmp, dtype=cv2.CV_32F)
        cv2.add(tmp, sh, dst=dst, dtype=depth)


def preprocess(frames: np.ndarray | Sequence[np.ndarray], size: int, mean: Sequence[float],
               std: Sequence[float], *, layout: Layout = "NCHW", rgb: bool = False,
               dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, list[Letterbox]]:
    """Turn one frame or a list of frames into a network input batch.

    Each frame is letterboxed (:func:`letterbox`: top-left) into a uint8 canvas padded with the
    mean color, then ``(pixel - mean) / std`` is computed per RGB channel straight into the output
    batch, so the padding is ~0 after normalization, as in the reference pipelines (effdet and
    automl pad with the mean).

    Args:
        frames: H×W×3 uint8 images, BGR (OpenCV's order) unless ``rgb`` is true; a 4-D array is
            taken as a batch of frames.
        size: the model's square input side.
        mean, std: per-channel normalization in 0..255 RGB units: ``(pixel - mean) / std``.
        layout: ``"NCHW"`` or ``"NHWC"``, as the artifact wants.
        rgb: the frames are already RGB.
        dtype: dtype of the batch: float32, or float16 for FP16 artifacts (float64 works too; any
            other dtype is cast from the float32 result with numpy's rules).

    Returns:
        The C-contiguous [B,3,S,S] or [B,S,S,3] batch and one :class:`Letterbox` per frame (to map
        boxes back).

    Raises:
        InputError: a frame is not an H×W×3 uint8 image (see :func:`validate_frame`), or no frames.
        ValueError: ``layout``, ``size``, ``mean`` or ``std`` is invalid.
    """
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    size = int(size)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    mean_arr = np.asarray(mean, dtype=np.float64).reshape(-1)
    scale32, shift32 = normalization_affine(mean, std)
    scale = tuple(float(v) for v in scale32)
    shift = tuple(float(v) for v in shift32)

    frames = _frame_list(frames)
    out_dtype = np.dtype(dtype)
    work_dtype = out_dtype if out_dtype in _CV_DEPTH else np.dtype(np.float32)
    shape = (len(frames), 3, size, size) if layout == "NCHW" else (len(frames), size, size, 3)
    batch = np.empty(shape, dtype=work_dtype)
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    tmp = (np.empty((size, size, 3), dtype=np.float32)
           if layout == "NHWC" and work_dtype != np.float32 else None)
    fill = _fill(mean_arr, rgb)
    boxes = []
    for frame, dst in zip(frames, batch):
        _, info = letterbox(frame, size, out=canvas, fill=fill)
        _normalize_into(canvas, dst, scale, shift, layout, not rgb, tmp)
        boxes.append(info)
    if work_dtype != out_dtype:
        batch = batch.astype(out_dtype)
    return batch, boxes


def canvas_batch(frames: np.ndarray | Sequence[np.ndarray], size: int, mean: Sequence[float], *,
                 color: str = "BGR", rgb: bool = False) -> tuple[np.ndarray, list[Letterbox]]:
    """Letterbox frames straight into a uint8 ``[B,size,size,3]`` batch: the input of an artifact
    that normalizes inside its graph (manifest ``input.preprocessing == "model"``).

    The same letterbox as :func:`preprocess` (top-left, padded with the ``mean`` colour, so the
    graph's normalization makes the padding ~0), with no float work: each frame is resized into
    its slot of the batch, and swapped in place to ``color`` order (``"BGR"`` or ``"RGB"``) if the
    frames (BGR unless ``rgb``) come in the other one.

    Raises:
        InputError: a frame is not an H×W×3 uint8 image (see :func:`validate_frame`), or no frames.
        ValueError: ``size``, ``mean`` or ``color`` is invalid.
    """
    size = int(size)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if color not in ("BGR", "RGB"):
        raise ValueError(f"color must be 'BGR' or 'RGB', got {color!r}")
    mean_arr = np.asarray(mean, dtype=np.float64).reshape(-1)
    if mean_arr.shape != (3,):
        raise ValueError(f"mean must be 3 numbers (RGB), got {mean!r}")
    frames = _frame_list(frames)
    batch = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    fill = _fill(mean_arr, rgb)
    swap = rgb != (color == "RGB")
    boxes = []
    for frame, dst in zip(frames, batch):
        _, info = letterbox(frame, size, out=dst, fill=fill)
        if swap:
            cv2.cvtColor(dst, cv2.COLOR_BGR2RGB, dst=dst)  # in place, on the small canvas
        boxes.append(info)
    return batch, boxes


def prepare(frames: np.ndarray | Sequence[np.ndarray], spec: InputSpec, *,
            rgb: bool = False) -> tuple[np.ndarray, list[Letterbox]]:
    """Frames → an artifact's input batch, exactly as its manifest's ``spec`` says, and each frame's
    :class:`Letterbox`. The one place that does it: the runtime's pipeline, the converters'
    calibration and parity checks all call it.

    ``spec.preprocessing == "model"``: the letterboxed uint8 canvas (:func:`canvas_batch`).
    Otherwise the normalized tensor (:func:`preprocess`: layout, float16 or float32), quantized with
    ``spec.quantization`` for integer inputs.
    """
    norm = spec.normalization
    if spec.preprocessing == "model":
        return canvas_batch(frames, spec.image_size, norm.mean, color=spec.color, rgb=rgb)
    dtype = np.float16 if spec.dtype == "float16" else np.float32
    batch, boxes = preprocess(frames, spec.image_size, norm.mean, norm.std, layout=spec.layout,  # type: ignore[arg-type]
                              rgb=rgb, dtype=dtype)
    if spec.quantization is not None:  # integer-input artifacts (full-INT8 TFLite)
        batch = quantize(batch, spec.quantization, spec.dtype)
    return batch, boxes


def _frame_list(frames: object) -> list[np.ndarray]:
    """One frame, a list of frames or a 4-D batch → a list of validated frames."""
    if frames is None or (isinstance(frames, np.ndarray) and frames.ndim != 4):
        frames = [frames]
    checked = [validate_frame(f) for f in frames]  # type: ignore[union-attr]
    if not checked:
        raise InputError("no frames given")
    return checked


def _fill(mean: np.ndarray, rgb: bool) -> tuple[int, int, int]:
    """The letterbox padding: the mean colour (RGB ``mean``) in the frames' channel order."""
    fill_rgb = tuple(int(v) for v in np.clip(np.rint(mean), 0, 255))
    return fill_rgb if rgb else fill_rgb[::-1]  # type: ignore[return-value]
