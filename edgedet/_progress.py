"""One progress bar for every long job (export, calibration, data generation, training,
evaluation, benchmarks): tqdm where installed, else a log line every ~10%.

Callers always get an object with ``update``, ``set_description``, ``set_postfix``, ``clear``,
``refresh`` and ``close``, so no call site checks for None.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("edgedet")


class _LogProgress:
    """The fallback: logs ``desc: n/total unit`` at INFO about every 10% (silent if disabled)."""

    def __init__(self, total: int | None, desc: str, unit: str, enabled: bool, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.enabled, self.n = total, desc, unit, enabled, initial
        self._step = max(1, (total or 0) // 10)

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.enabled and (self.n // self._step > before // self._step or self.n == self.total):
            log.info("%s: %d/%s %s", self.desc, self.n, self.total if self.total is not None else "?", self.unit)

    def set_description(self, text: str) -> None:
        self.desc = text

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def clear(self) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str = "", *, unit: str = "it", enabled: bool = True,
                 initial: int = 0, leave: bool = True) -> Any:
    """A tqdm bar on stderr if ``enabled`` and tqdm is installed, else the logging fallback."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=sys.stderr,
                        dynamic_ncols=True)
    return _LogProgress(total, desc, unit, enabled, initial)
