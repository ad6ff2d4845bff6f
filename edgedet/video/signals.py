"""Ctrl-C and ``systemctl stop`` end the loop after the current frame instead of killing it."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any

__all__ = ["SignalStop"]

log = logging.getLogger(__name__)


class SignalStop:
    """SIGINT/SIGTERM set ``event`` (a second one raises KeyboardInterrupt: stop now). Handlers are
    installed only in the main thread (Python allows no other) and restored on exit."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            log.warning("%s again: stopping now", name)
            raise KeyboardInterrupt
        self.received = name
        self.event.set()
        log.info("%s: stopping after this frame (send it again to stop at once)", name)

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
