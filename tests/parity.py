"""The independent FP32 check every exporter's tests run: a fresh frame through PyTorch and through
the exported artifact, raw outputs compared (not the pipeline's own parity figures)."""
from __future__ import annotations

import numpy as np
import torch

from converters.calibration import synthetic_frame
from edgedet.preprocess import preprocess

FRAME_SEED = 4242


def pytorch_outputs(model, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch FP32 ``(cls_logits, box_regression)`` of ``frame``, preprocessed as the runtime does."""
    norm = model.config.normalization
    batch, _ = preprocess(frame, model.config.image_size, norm.mean, norm.std)
    with torch.no_grad():
        cls, box = model(torch.from_numpy(batch))
    return cls.numpy(), box.numpy()


def assert_fp32_matches_pytorch(run_artifact, directory, model, tolerance: float = 1e-3) -> None:
    """``run_artifact(directory, frame) -> (manifest, cls, box)`` agrees with ``model`` within
    ``tolerance`` (max abs) on a frame the export never saw, and so does the manifest's figure.
    The outputs must be non-trivial and depend on the image, or agreement would mean nothing."""
    frame = synthetic_frame(FRAME_SEED, 0)
    manifest, cls, box = run_artifact(directory, frame)
    ref_cls, ref_box = pytorch_outputs(model, frame)
    assert ref_cls.std() > 1.0 and ref_box.std() > 0.2  # non-trivial outputs, not ~0
    other_cls, _ = pytorch_outputs(model, synthetic_frame(FRAME_SEED, 1))
    assert (other_cls - ref_cls).std() > 0.05 * ref_cls.std()  # and they depend on the image
    assert np.abs(cls - ref_cls).max() <= tolerance
    assert np.abs(box - ref_box).max() <= tolerance
    assert manifest.parity["cls_max_abs"] <= tolerance and manifest.parity["box_max_abs"] <= tolerance


def assert_fp16_parity(parity) -> None:
    """The FP16 limits every format meets against PyTorch FP32 (a manifest's parity figures):
    small absolute errors, cosines >= 0.9999, scores within 0.02, the same top candidates."""
    assert 0 < parity["cls_max_abs"] <= 0.1 and parity["box_max_abs"] <= 0.03
    assert parity["cls_cosine"] >= 0.9999 and parity["box_cosine"] >= 0.9999
    assert parity["score_max_abs"] <= 0.02 and parity["top100_agreement"] >= 0.95
