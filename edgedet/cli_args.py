"""argparse helpers shared by edgedet's command lines (the benchmark, the camera loop).

Here rather than in :mod:`edgedet.video`: parsing ``--frame-size`` has nothing to do with video,
and the benchmark should not import the camera loop (and OpenCV's capture side) to read its options.
"""
from __future__ import annotations

import argparse

__all__ = ["frame_size_arg"]


def frame_size_arg(text: str) -> tuple[int, int]:
    """``"1280x720"`` → ``(1280, 720)``: an argparse ``type`` for the command lines' ``--frame-size``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame size must be WIDTHxHEIGHT (e.g. 1280x720), got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"frame size must be positive, got {text!r}")
    return width, height
