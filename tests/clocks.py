"""Injectable clocks for tests of time-dependent policies (profiling, selection): no real timing."""
from __future__ import annotations


class StepClock:
    """Each reading is ``step_ms`` later than the one before: every timed call lasts step_ms."""

    def __init__(self, step_ms: float) -> None:
        self.now, self.step = 0.0, step_ms / 1000

    def __call__(self) -> float:
        self.now += self.step
        return self.now
