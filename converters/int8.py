"""The INT8 engine of every exporter: full quantization, or accuracy-aware quantization that keeps
the units whose quantization hurts most in float until an :class:`~converters.accuracy.AccuracyTarget`
is met.

A backend supplies only its :class:`Recipe`: how to quantize with a given set of layers left in
float, how to run a candidate, and how to enumerate and rank its units (activation quantizers for
onnxruntime and OpenVINO, model blocks for TFLite). The search here is the same for all:

1. quantize everything; if the target is met (with its headroom) on the validation frames, done;
2. the recipe ranks its units, most harmful first (and may say from how many units to start);
3. the fewest top-ranked units whose float set meets the goal are found by doubling, then bisection
   to within :data:`TOLERANCE` (:func:`smallest_passing`); every candidate is really quantized and
   run by the backend as deployed;
4. if even every unit in float misses the goal, the fully quantized model is kept (with a warning):
   the weights alone are then the problem.

What happened is one :class:`Int8Report` (units kept in float, figures, quantizations tried), which
the exporters store in their files where the format allows it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from converters.accuracy import AccuracyTarget, Agreement, Outputs, validation_reference

if TYPE_CHECKING:
    from converters.calibration import Calibration

__all__ = ["TOLERANCE", "Int8Report", "Int8Result", "Ranking", "Recipe", "Unit",
           "int8_options", "quantize", "search", "smallest_passing"]

logger = logging.getLogger(__name__)

#: Bisection stops when the float set is known to within this fraction (fewer quantizations).
TOLERANCE = 0.125


@dataclass(frozen=True)
class Unit:
    """Something that may stay in float: a name for the report, and what the recipe leaves in float
    for it (node names, an ignored scope, op scopes: the recipe's vocabulary)."""

    name: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class Ranking:
    """A recipe's units, most harmful first. ``start``: the search may assume fewer than this many
    units miss the goal (a cheap emulation said so); 1 assumes nothing."""

    units: tuple[Unit, ...]
    start: int = 1


#: Quantizes with ``members`` in float and scores the candidate on the ranking frames (shortfall).
Trial = Callable[[Sequence[str]], float]


class Recipe(Protocol):
    """What a backend supplies to :func:`quantize`."""

    def quantize(self, float_members: Sequence[str]) -> Any:
        """The model quantized with ``float_members`` (:attr:`Unit.members`) left in float;
        ``()`` is the fully quantized model. Calibrated once, however often it is called."""

    def run(self, candidate: Any, batches: Sequence[np.ndarray]) -> list[Outputs]:
        """``candidate``'s outputs on preprocessed NCHW float32 ``batches``, run as deployed."""

    def rank(self, full: Any, agreement: Agreement, trial: Trial) -> Ranking:
        """The units of the fully quantized model ``full``, most harmful first; ``trial`` measures
        a real quantization (counted in the report) for recipes that rank that way."""


@dataclass
class Int8Report:
    """What an accuracy-aware INT8 quantization did."""

    target: str
    #: Figures of the fully quantized model on the validation frames (see converters.accuracy.FIGURES).
    full: dict[str, float]
    #: Figures of the chosen model (the fully quantized one when the search did not run or failed).
    figures: dict[str, float]
    #: Whether the chosen model meets the target with its headroom on the validation frames.
    met: bool
    #: Units the backend ranked (0: the fully quantized model met the goal, no ranking).
    units: int = 0
    float_units: tuple[str, ...] = ()
    #: What the recipe left in float for those units (its vocabulary, in ranking order).
    float_layers: tuple[str, ...] = ()
    #: Models quantized, the fully quantized one included.
    quantizations: int = 1
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """The report without timings, for storing in an artifact (the same inputs give the same file)."""
        out = asdict(self)
        del out["seconds"]
        out["float_units"], out["float_layers"] = list(self.float_units), list(self.float_layers)
        return out


@dataclass
class Int8Result:
    """A quantized model, and the report when the quantization was accuracy-aware."""

    model: Any
    report: Int8Report | None = None

    @property
    def float_layers(self) -> tuple[str, ...]:
        return self.report.float_layers if self.report else ()


def int8_options(target: AccuracyTarget | None) -> dict[str, str]:
    """The manifest ``options`` (and export-key part) of INT8 made with ``target`` (None: full)."""
    if target is None:
        return {"int8_mode": "full"}
    return {"int8_mode": "accuracy-aware", "accuracy_target": target.describe()}


def quantize(recipe: Recipe, target: AccuracyTarget | None, model: Any = None,
             calibration: Calibration | None = None) -> Int8Result:
    """INT8 of ``recipe``: fully quantized without a ``target``, else accuracy-aware, measured
    against the PyTorch ``model`` on the validation frames of ``calibration``."""
    if target is None:
        return Int8Result(recipe.quantize(()))
    if model is None or calibration is None:
        raise ValueError("accuracy-aware INT8 needs the PyTorch model and the calibration")
    return search(recipe, Agreement(target, validation_reference(model, calibration, target)))


def search(recipe: Recipe, agreement: Agreement) -> Int8Result:
    """Accuracy-aware INT8 (see the module doc)."""
    started = time.perf_counter()
    target = agreement.target
    goal = target.headroom
    count = 0

    def quantized(members: Sequence[str]) -> Any:
        nonlocal count
        count += 1
        return recipe.quantize(members)

    full = quantized(())
    full_figures = agreement.figures(recipe.run(full, agreement.batches))
    report = Int8Report(target.describe(), full_figures, full_figures, met=full_figures["shortfall"] <= goal)
    if report.met:
        report.seconds = time.perf_counter() - started
        logger.info("INT8 meets the accuracy target fully quantized (shortfall %.2f, aiming at <= %.2f)",
                    full_figures["shortfall"], goal)
        return Int8Result(full, report)

    def trial(members: Sequence[str]) -> float:
        candidate = quantized(members)
        return agreement.shortfall(recipe.run(candidate, agreement.ranking_batches))

    ranking = recipe.rank(full, agreement, trial)
    units = ranking.units
    tried: dict[int, tuple[dict[str, float], Any, tuple[str, ...]]] = {}

    def members(n: int) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for unit in units[:n] for m in unit.members))

    def shortfall_at(n: int) -> float:
        float_members = members(n)
        candidate = quantized(float_members)
        figures = agreement.figures(recipe.run(candidate, agreement.batches))
        logger.info("INT8 with %d of %d units in float (%d layers): AP50 %.4f, cls cosine %.6f, box cosine "
                    "%.6f, shortfall %.3f", n, len(units), len(float_members), figures["detection_ap50"],
                    figures["cls_cosine"], figures["box_cosine"], figures["shortfall"])
        # Keep only the models that meet the goal (the smallest is the answer).
        tried[n] = (figures, candidate if figures["shortfall"] <= goal else None, float_members)
        return figures["shortfall"]

    n, shortfall = (smallest_passing(shortfall_at, len(units), goal, tolerance=TOLERANCE, start=ranking.start)
                    if units else (None, full_figures["shortfall"]))
    report.units = len(units)
    if n is None:
        report.quantizations, report.seconds = count, time.perf_counter() - started
        logger.warning("INT8 accuracy target %s is out of reach even with all %d units in float (shortfall "
                       "%.3f); keeping the fully quantized model", target.describe(), len(units), shortfall)
        return Int8Result(full, report)
    figures, model, float_members = tried[n]
    report.figures, report.met = figures, True
    report.float_units = tuple(unit.name for unit in units[:n])
    report.float_layers = float_members
    report.quantizations, report.seconds = count, time.perf_counter() - started
    logger.info("INT8 accuracy-aware: %d of %d units in float (%d layers), shortfall %.3f -> %.3f "
                "(%d quantizations, %.1f s)", n, len(units), len(float_members), full_figures["shortfall"],
                shortfall, count, report.seconds)
    return Int8Result(model, report)


def smallest_passing(shortfall_at: Callable[[int], float], size: int, goal: float, *,
                     tolerance: float = 0.0, start: int = 1) -> tuple[int | None, float]:
    """The smallest ``n`` in ``start..size`` with ``shortfall_at(n) <= goal``, for a shortfall that
    (roughly) falls as ``n`` grows (those below ``start`` are taken to miss it): doubling from
    ``start``, then bisection of the last step until the bracket is narrower than
    ``max(1, tolerance * n)`` (a ``tolerance`` of 0.125 accepts up to 12.5% more than the smallest
    ``n``, for fewer evaluations). ``(n, shortfall_at(n))``, or ``(None, shortfall_at(size))`` when
    even ``size`` misses the goal. Each ``n`` is evaluated once.
    """
    if size < 1:
        raise ValueError("smallest_passing needs size >= 1")
    n = min(max(1, start), size)
    low = n - 1  # the largest n known (or taken) to miss the goal
    while True:
        s = shortfall_at(n)
        if s <= goal:
            break
        if n >= size:
            return None, s
        low, n = n, min(size, 2 * n)
    high, best = n, s  # the smallest n known to meet it
    while high - low > max(1, int(tolerance * high)):
        mid = (low + high) // 2
        s = shortfall_at(mid)
        if s <= goal:
            high, best = mid, s
        else:
            low = mid
    return high, best
