"""Data sets for training, INT8 calibration and evaluation.

:mod:`edgedet.data.synthetic` is the built-in, procedurally generated shapes data set in COCO
format (numpy + OpenCV only, no download).
"""
from edgedet.data.synthetic import (
    CLASSES,
    VAL_INDEX_OFFSET,
    SyntheticConfig,
    categories,
    generate_coco,
    generate_splits,
    iter_images,
    render,
)

__all__ = [
    "CLASSES",
    "VAL_INDEX_OFFSET",
    "SyntheticConfig",
    "categories",
    "generate_coco",
    "generate_splits",
    "iter_images",
    "render",
]
