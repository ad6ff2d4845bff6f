"""The loop's optional window: whether one can open here, and showing frames in it."""
from __future__ import annotations

import contextlib
import logging
import os
import sys

import cv2
import numpy as np

__all__ = ["Window", "display_available"]

log = logging.getLogger(__name__)

#: Keys that close the loop from its window: ``q`` and Esc.
QUIT_KEYS = (ord("q"), 27)


def display_available() -> tuple[bool, str]:
    """Whether ``cv2.imshow`` can open a window here, and why not."""
    gui = None
    for row in cv2.getBuildInformation().splitlines():
        name, _, value = row.strip().partition(":")
        if name.strip() == "GUI":
            gui = value.strip()
            break
    if gui is not None and gui.upper() in ("", "NONE", "NO"):
        return False, ("this OpenCV has no GUI (opencv-python-headless); `pip install opencv-python` "
                       "instead for a window")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY and WAYLAND_DISPLAY are unset: a service, or ssh without -X)"
    return True, ""



class Window:
    """An OpenCV window opened at the first frame shown. If it cannot be opened (no GUI after
    all), :attr:`usable` turns false with a log line and the loop runs headless."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.usable = True
        self._open = False

    def show(self, image: np.ndarray) -> str | None:
        """Show ``image``; the reason to stop (``"key"`` for q/Esc, ``"window closed"``) or None."""
        if not self._open:
            try:
                cv2.namedWindow(self.name, cv2.WINDOW_NORMAL)
                self._open = True
            except cv2.error as exc:
                log.warning("cannot open a window (%s); running headless", str(exc).strip().splitlines()[-1])
                self.usable = False
                return None
        cv2.imshow(self.name, image)
        key = cv2.waitKey(1) & 0xFF
        if key in QUIT_KEYS:
            return "key"
        if cv2.getWindowProperty(self.name, cv2.WND_PROP_VISIBLE) < 1:
            return "window closed"
        return None

    def close(self) -> None:
        if self._open:
            with contextlib.suppress(cv2.error):
                cv2.destroyWindow(self.name)
            self._open = False
