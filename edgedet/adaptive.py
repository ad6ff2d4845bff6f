"""The adaptive serving policy: when to step down to a faster artifact, and when to step back up.

A pure object (no runtimes, no threads, no wall clock of its own): :class:`AdaptivePolicy` is fed
the end-to-end latency of each call on the artifact it serves, with a clock reading, and returns
a :class:`Switch` when the serving artifact should change. :class:`edgedet.detector.Detector`
wires it to real calls; tests feed it latencies and a fake clock.

The rule (issue 13):

* The *ladder* is the profiled artifacts ordered by expected accuracy — the rank selection uses,
  :func:`edgedet.detector.accuracy_ranks`, so variants, input sizes and precisions share one
  scale — keeping only those faster than every more accurate one (a slower, less accurate
  artifact is never worth stepping to).
* Latencies of the serving artifact fill a rolling window of ``window`` calls. Its percentile
  (``percentile``, nearest rank below, so that one spike among ten calls never moves it) is the
  *observed* latency; observed / profiled of the serving artifact is the *slowdown* of the device.
* A rung's *predicted* latency now is its profiled latency × the slowdown, never less than its
  profiled latency (a serving artifact that runs faster than its profile says nothing about the
  others: trusting it made a rung profiled just over the budget look like a fit).
* Over budget → step down to the most accurate rung predicted within ``budget × down_margin``
  (else the fastest rung).
* Within budget and a more accurate rung predicted within ``budget × up_margin`` → step up to the
  most accurate such rung. ``up_margin < down_margin ≤ 1`` is the hysteresis band. Once the device
  is back to its profiled speed (slowdown ≤ ``recovered_slowdown``) a rung predicted within the
  budget itself qualifies too: the start-up choice may sit above ``budget × up_margin``, and the
  profile already showed it fits at that speed.
* No decision before ``min_samples`` calls on the serving artifact, nor within ``dwell_s`` of the
  last switch; a switch empties the window (the new artifact's latencies are its own).
* Flapping backs off: a rung stepped down from within ``10 × dwell_s`` of being stepped up to is
  not stepped up to again for ``dwell_s × 2**(n-1)`` after its n-th such failure (n capped at 7),
  so a rung whose profile is too optimistic is retried ever more rarely instead of every dwell.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

log = logging.getLogger(__name__)

__all__ = ["AdaptiveConfig", "AdaptivePolicy", "Rung", "Switch", "pareto_ladder"]


@dataclass(frozen=True)
class Rung:
    """One artifact the policy may serve: its name, profiled latency (ms) and accuracy rank
    (any orderable value; higher is more accurate)."""

    name: str
    profiled_ms: float
    accuracy: tuple | float


@dataclass(frozen=True)
class AdaptiveConfig:
    """Policy parameters (defaults suit a camera loop at 10-60 calls per second)."""

    window: int = 30  #: calls in the rolling window
    min_samples: int = 10  #: calls on the serving artifact before any decision
    percentile: float = 90  #: the window's percentile compared with the budget
    down_margin: float = 0.9  #: a step-down target must be predicted within budget × this
    up_margin: float = 0.8  #: a step-up target must be predicted within budget × this
    dwell_s: float = 2.0  #: minimum seconds between two switches
    recovered_slowdown: float = 1.1  #: at or below this slowdown, a rung predicted within budget may be stepped up to

    def __post_init__(self) -> None:
        if not 0 < self.up_margin < self.down_margin <= 1:
            raise ValueError(f"need 0 < up_margin < down_margin <= 1, got {self.up_margin}, {self.down_margin}")
        if not 1 <= self.min_samples <= self.window:
            raise ValueError(f"need 1 <= min_samples <= window, got {self.min_samples}, {self.window}")
        if not 0 < self.percentile <= 100 or self.dwell_s < 0 or self.recovered_slowdown < 1:
            raise ValueError("percentile must be in (0, 100], dwell_s >= 0 and recovered_slowdown >= 1")


@dataclass(frozen=True)
class Switch:
    """A decision to serve another artifact, with the figures behind it."""

    at: float  #: clock reading of the decision
    direction: str  #: "down" or "up"
    source: str  #: the artifact served until now
    target: str  #: the artifact to serve
    observed_ms: float  #: the window's percentile on ``source``
    profiled_ms: float  #: ``source``'s profiled latency
    slowdown: float  #: observed / profiled
    predicted_ms: float  #: ``target``'s profiled latency × slowdown
    budget_ms: float
    samples: int  #: calls in the window

    @property
    def reason(self) -> str:
        """One line a person can act on."""
        if self.direction == "down":
            why = f"p-latency {self.observed_ms:.1f} ms over the {self.budget_ms:g} ms budget"
        else:
            why = f"device recovered: p-latency {self.observed_ms:.1f} ms"
        return (f"{why} on {self.source} (profiled {self.profiled_ms:.1f} ms, slowdown {self.slowdown:.2f}x, "
                f"{self.samples} calls); {self.target} predicted {self.predicted_ms:.1f} ms")


def pareto_ladder(rungs: Sequence[Rung]) -> list[Rung]:
    """``rungs`` ordered from least to most accurate, keeping only those strictly faster than every
    more accurate one (ties in accuracy: the faster)."""
    ordered = sorted(rungs, key=lambda r: (r.accuracy, -r.profiled_ms))
    kept: list[Rung] = []
    fastest_above = math.inf
    for rung in reversed(ordered):  # most accurate first
        if rung.profiled_ms < fastest_above:
            kept.append(rung)
            fastest_above = rung.profiled_ms
    return kept[::-1]


def _nearest_rank_below(values: Sequence[float], percentile: float) -> float:
    """The ``percentile`` of ``values`` rounding the rank down: with 10 values the 90th is the 9th
    smallest, so a single outlier never decides."""
    ordered = sorted(values)
    return ordered[int(math.floor(percentile / 100 * (len(ordered) - 1)))]


class AdaptivePolicy:
    """Decide, call by call, which rung of ``ladder`` to serve within ``budget_ms``.

    Args:
        ladder: candidate artifacts (any order; reduced with :func:`pareto_ladder`).
        budget_ms: the latency budget.
        serving: name of the rung served at the start (must be on the ladder).
        config: policy parameters.
        clock: seconds, monotonic (injectable; :func:`time.monotonic` by default).

    Not thread-safe: the caller serializes :meth:`observe` (the Detector holds a lock).
    """

    def __init__(self, ladder: Sequence[Rung], budget_ms: float, serving: str, *,
                 config: AdaptiveConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.ladder = pareto_ladder(ladder)
        names = [r.name for r in self.ladder]
        if serving not in names:
            raise ValueError(f"{serving!r} is not on the ladder {names}")
        self.budget_ms, self.config, self.clock = float(budget_ms), config or AdaptiveConfig(), clock
        self._index = names.index(serving)
        self._window: deque[float] = deque(maxlen=self.config.window)
        self._last_switch = -math.inf
        self._failures: dict[str, tuple[float, int]] = {}  # rung -> (last step down from it, failures in a row)

    @property
    def serving(self) -> Rung:
        return self.ladder[self._index]

    def neighbours(self) -> list[Rung]:
        """The rungs one step down and one step up from the serving one: what to keep loaded."""
        return [self.ladder[i] for i in (self._index - 1, self._index + 1) if 0 <= i < len(self.ladder)]

    def observed_ms(self) -> float | None:
        """The window's percentile, or None before ``min_samples`` calls."""
        if len(self._window) < self.config.min_samples:
            return None
        return _nearest_rank_below(self._window, self.config.percentile)

    def observe(self, artifact: str, latency_ms: float, now: float | None = None) -> Switch | None:
        """Record one call's end-to-end latency on ``artifact``; return a switch, or None.

        Latencies of any other artifact (a call that started before the last switch) are ignored.
        After a returned switch the policy serves its target: the caller swaps the artifact.
        """
        if artifact != self.serving.name or not math.isfinite(latency_ms):
            return None
        now = self.clock() if now is None else now
        self._window.append(float(latency_ms))
        observed = self.observed_ms()
        if observed is None or now - self._last_switch < self.config.dwell_s:
            return None
        slowdown = observed / self.serving.profiled_ms
        if observed > self.budget_ms:
            target = self._most_accurate_within(self.budget_ms * self.config.down_margin, slowdown,
                                                below=self._index, now=now) or (0 if self._index > 0 else None)
            direction = "down"
        else:
            limit = self.budget_ms * (1.0 if slowdown <= self.config.recovered_slowdown else self.config.up_margin)
            target = self._most_accurate_within(limit, slowdown, above=self._index, now=now)
            direction = "up"
        if target is None:
            return None
        switch = Switch(at=now, direction=direction, source=self.serving.name, target=self.ladder[target].name,
                        observed_ms=observed, profiled_ms=self.serving.profiled_ms, slowdown=slowdown,
                        predicted_ms=self._predicted(target, slowdown), budget_ms=self.budget_ms,
                        samples=len(self._window))
        if direction == "down":
            self._record_failure(self.serving.name, now)
        self._index, self._last_switch = target, now
        self._window.clear()
        return switch

    def restart_window(self) -> None:
        """Forget the window but not the dwell: the serving artifact now runs differently (it was
        reloaded with another thread count), so its slowdown must be observed afresh."""
        self._window.clear()

    def reset(self, serving: str, now: float | None = None) -> None:
        """Serve ``serving`` (on the ladder) from now on, e.g. when a switch could not be applied:
        the window restarts and so does the dwell."""
        self._index = [r.name for r in self.ladder].index(serving)
        self._window.clear()
        self._last_switch = self.clock() if now is None else now

    def _predicted(self, index: int, slowdown: float) -> float:
        return self.ladder[index].profiled_ms * max(1.0, slowdown)

    def _record_failure(self, name: str, now: float) -> None:
        """``name`` is stepped down from: count it as a failure in a row if it was stepped up to recently."""
        recent_up = now - self._last_switch <= 10 * self.config.dwell_s
        _, failures = self._failures.get(name, (now, 0))
        self._failures[name] = (now, min(failures + 1, 7) if recent_up else 1)

    def _backing_off(self, name: str, now: float) -> bool:
        if name not in self._failures:
            return False
        since, failures = self._failures[name]
        return now - since < self.config.dwell_s * 2 ** (failures - 1)

    def _most_accurate_within(self, limit_ms: float, slowdown: float, *, below: int | None = None,
                              above: int | None = None, now: float = 0.0) -> int | None:
        """Index of the most accurate rung (below index ``below`` or above index ``above``) whose
        predicted latency is within ``limit_ms`` (stepping up: and that is not backing off)."""
        indices = range(below) if below is not None else range(above + 1, len(self.ladder))  # type: ignore[operator]
        fitting = [i for i in indices if self._predicted(i, slowdown) <= limit_ms
                   and (below is not None or not self._backing_off(self.ladder[i].name, now))]
        return max(fitting) if fitting else None
