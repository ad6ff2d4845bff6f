"""Affine (de)quantization of integer model I/O, as the manifest describes it.

``real = scale * (q - zero_point)``: :func:`quantize` turns a preprocessed float batch into an
artifact's integer input, :func:`dequantize` turns integer outputs back into floats. One
definition for the runtime (:class:`edgedet.detector.Pipeline`) and the converters' verification,
so an artifact is checked exactly as it is fed. numpy only.
"""
from __future__ import annotations

import numpy as np

from edgedet.manifest import Quantization

__all__ = ["dequantize", "quantize"]


def quantize(values: np.ndarray, quantization: Quantization, dtype: str | np.dtype) -> np.ndarray:
    """``clip(round(values / scale + zero_point))`` as ``dtype`` (an integer type)."""
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype)
    q = np.rint(values / quantization.scale + quantization.zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, quantization: Quantization | None) -> np.ndarray:
    """``(values - zero_point) * scale`` as float32; ``values`` unchanged without quantization."""
    if quantization is None:
        return values
    return (values.astype(np.float32) - quantization.zero_point) * np.float32(quantization.scale)
