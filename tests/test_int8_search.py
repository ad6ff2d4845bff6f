"""converters.int8 and converters.accuracy: the one INT8 search, its target and the one cosine.

The search runs on a fake recipe: a "model" is the set of members left in float, and its outputs
are a fixed function of that set (each quantized unit adds its own noise to the logits, and some
also drop detections), so every figure, and the float set the search must find, is known. The
real backends' recipes are exercised by tests/test_convert_onnx.py, test_convert_openvino.py and
test_convert_tflite.py.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence

import numpy as np
import pytest

from converters import int8
from converters.accuracy import AccuracyTarget, Agreement
from converters.verify import Reference, check_parity, compare, cosine

N_ANCHORS, N_CLASSES, N_OBJECTS = 64, 3, 10
#: Unit -> (logit noise it adds while quantized, objects whose detection it drops while quantized).
UNITS = {"stem": (0.0, ()), "stage1": (0.6, ()), "stage2": (0.1, ()), "stage3": (1.2, ()),
         "fpn": (0.0, (0, 1)), "head": (0.3, ()), "cls_net": (0.05, ()), "box_net": (0.0, ())}


def make_reference() -> Reference:
    """One image: 64 disjoint anchors, objects of class 0 on the first 10 (logit +4), the rest
    background (-6)."""
    anchors = np.array([[x * 40, y * 40, x * 40 + 32, y * 40 + 32] for y in range(8) for x in range(8)], np.float32)
    cls = np.full((1, N_ANCHORS, N_CLASSES), -6.0, np.float32)
    cls[0, :N_OBJECTS, 0] = 4.0
    box = np.random.default_rng(1).normal(0, 0.1, (1, N_ANCHORS, 4)).astype(np.float32)
    return Reference((np.zeros((1, 3, 8, 8), np.float32),), (cls,), (box,), "fake", anchors)


class FakeRecipe:
    """A recipe whose candidates' outputs are a function of the float set (see the module doc)."""

    def __init__(self, reference: Reference, *, start: int = 1, weights_noise: float = 0.0) -> None:
        self.reference, self.start, self.weights_noise = reference, start, weights_noise
        self.pattern = np.random.default_rng(0).normal(0, 1, reference.cls[0].shape).astype(np.float32)
        self.quantized: list[tuple[str, ...]] = []

    def quantize(self, float_members: Sequence[str]) -> tuple[str, ...]:
        model = tuple(sorted(float_members))
        self.quantized.append(model)
        return model

    def run(self, candidate: tuple[str, ...], batches: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        quantized = [u for u in UNITS if f"{u}/op" not in candidate]
        cls = self.reference.cls[0] + (self.weights_noise + sum(UNITS[u][0] for u in quantized)) * self.pattern
        for u in quantized:
            cls[0, list(UNITS[u][1]), 0] = -6.0
        return [(cls, self.reference.box[0].copy()) for _ in batches]

    def rank(self, full: tuple[str, ...], agreement: Agreement, trial: int8.Trial) -> int8.Ranking:
        shortfalls = {u: trial([f"{u}/op"]) for u in UNITS}  # each unit alone in float, really quantized
        order = sorted(UNITS, key=lambda u: (shortfalls[u], u))
        return int8.Ranking(tuple(int8.Unit(u, (f"{u}/op",)) for u in order), start=self.start)


def search(target: AccuracyTarget, **kwargs) -> tuple[int8.Int8Result, FakeRecipe, Agreement]:
    reference = make_reference()
    recipe = FakeRecipe(reference, **kwargs)
    agreement = Agreement(target, reference)
    return int8.search(recipe, agreement), recipe, agreement


#: Met by nothing but the fpn (drops 2 of 10 detections: AP50 0.8) and stage3 (the most noise) in float.
TARGET = AccuracyTarget(detection_ap50=0.95, cls_cosine=0.99, box_cosine=0.97, validation_images=1)


def test_search_finds_the_fewest_top_ranked_units():
    result, recipe, agreement = search(TARGET)
    report = result.report
    assert report is not None and report.met
    # Brute force over the ranking's prefixes (the ranking is the recipe's: each unit alone in float).
    ranking = recipe.rank((), agreement, lambda m: agreement.shortfall(recipe.run(tuple(m), [0])))
    ranked = [u.name for u in ranking.units]
    shortfalls = [agreement.shortfall(recipe.run(tuple(f"{u}/op" for u in ranked[:n]), [0]))
                  for n in range(len(ranked) + 1)]
    expected = next(n for n, s in enumerate(shortfalls) if s <= TARGET.headroom)
    assert shortfalls[0] > 1.0 and expected >= 2  # a search was needed, over more than one unit
    assert report.float_units == tuple(ranked[:expected])
    assert {"fpn", "stage3"} <= set(report.float_units) and "stem" not in report.float_units
    assert result.model == tuple(sorted(f"{u}/op" for u in ranked[:expected]))
    assert report.float_layers == tuple(f"{u}/op" for u in ranked[:expected])
    assert report.figures["shortfall"] == pytest.approx(shortfalls[expected], rel=1e-5)
    assert report.full["detection_ap50"] == pytest.approx(0.8) and report.figures["detection_ap50"] == 1.0
    assert report.units == len(UNITS)
    # Every quantization counted: the full model, one per unit for the ranking, one per size tried
    # (each size once).
    searched = recipe.quantized[1 + len(UNITS):]
    assert report.quantizations == len(recipe.quantized) == 1 + len(UNITS) + len(searched)
    assert len(set(searched)) == len(searched) <= 2 * len(UNITS).bit_length()


def test_fully_quantized_model_meeting_the_target_is_kept():
    loose = AccuracyTarget(detection_ap50=0.5, cls_cosine=0.9, box_cosine=0.9, validation_images=1)
    result, recipe, _ = search(loose)
    report = result.report
    assert result.model == () and recipe.quantized == [()]
    assert report.met and report.units == 0 and report.quantizations == 1 and report.float_units == ()
    assert report.figures == report.full and report.full["shortfall"] <= loose.headroom


def test_unreachable_target_keeps_the_fully_quantized_model(caplog):
    """Noise no unit removes (the weights): even every unit in float misses, so the fully quantized
    model is kept, with a warning."""
    with caplog.at_level(logging.WARNING, logger="converters.int8"):
        result, recipe, _ = search(TARGET, weights_noise=2.0)
    report = result.report
    assert result.model == () and not report.met and report.float_units == () and report.float_layers == ()
    assert report.figures == report.full and report.units == len(UNITS)
    assert tuple(sorted(f"{u}/op" for u in UNITS)) in recipe.quantized  # every unit in float was tried
    assert "out of reach" in caplog.text


def test_search_starts_where_the_recipe_says():
    """A recipe's start (an emulation's estimate): smaller float sets are not tried."""
    result, recipe, _ = search(TARGET, start=5)
    searched = recipe.quantized[1 + len(UNITS):]
    assert min(len(model) for model in searched) == 5
    assert result.report.met and len(result.report.float_units) == 5


def test_full_mode_is_one_quantization_without_report():
    reference = make_reference()
    recipe = FakeRecipe(reference)
    result = int8.quantize(recipe, None)
    assert result.model == () and result.report is None and result.float_layers == ()
    assert recipe.quantized == [()]


def test_report_is_recorded_without_timings():
    report = search(TARGET)[0].report
    recorded = json.loads(json.dumps(report.record()))
    assert "seconds" not in recorded and recorded["float_units"] == list(report.float_units)
    assert recorded["target"] == TARGET.describe() and recorded["quantizations"] == report.quantizations


@pytest.mark.parametrize("needed, size, tolerance, expected", [
    (1, 100, 0.0, 1), (5, 100, 0.0, 5), (37, 100, 0.0, 37), (100, 100, 0.0, 100), (101, 100, 0.0, None),
    (37, 100, 0.125, None)])
def test_smallest_passing(needed, size, tolerance, expected):
    """Doubling then bisection: about 2 log2(n) evaluations, each n once, within the tolerance."""
    calls = []

    def shortfall_at(n: int) -> float:
        calls.append(n)
        return 0.5 if n >= needed else 2.0

    n, shortfall = int8.smallest_passing(shortfall_at, size, 1.0, tolerance=tolerance)
    assert len(calls) == len(set(calls)) and len(calls) <= 2 * size.bit_length()
    if needed > size:
        assert (n, shortfall) == (None, 2.0)
    elif expected is None:  # within the tolerance of the smallest
        assert needed <= n <= needed + max(1, tolerance * n) and shortfall == 0.5
    else:
        assert (n, shortfall) == (expected, 0.5)


@pytest.mark.parametrize("start, needed, expected", [(8, 3, 8), (8, 20, 20), (200, 5, 100)])
def test_smallest_passing_from_a_start(start, needed, expected):
    """Sizes below ``start`` are taken to miss: never evaluated; the answer is at least ``start``."""
    calls = []

    def shortfall_at(n: int) -> float:
        calls.append(n)
        return 0.5 if n >= needed else 2.0

    n, _ = int8.smallest_passing(shortfall_at, 100, 1.0, start=start)
    assert n == expected and min(calls) == min(start, 100) and len(calls) == len(set(calls))


# ------------------------------------------------------------------------------------ the target


def test_target_is_detection_level_with_cosine_floors():
    target = AccuracyTarget()
    assert (target.detection_ap50, target.cls_cosine, target.box_cosine) == (0.95, 0.999, 0.97)
    perfect = {"detection_ap50": 1.0, "cls_cosine": 1.0, "box_cosine": 1.0}
    assert target.shortfall(perfect) == 0.0
    assert target.shortfall({**perfect, "detection_ap50": 0.9}) == pytest.approx(2.0)
    assert target.shortfall({**perfect, "cls_cosine": 0.9995}) == pytest.approx(0.5)
    assert target.shortfall({**perfect, "box_cosine": 0.94}) == pytest.approx(2.0)
    assert target.shortfall({"cls_cosine": 1.0, "box_cosine": 1.0}) == math.inf  # a figure missing
    assert target.describe().startswith("detection_ap50>=0.95,cls_cosine>=0.999,box_cosine>=0.97")


@pytest.mark.parametrize("kwargs, message", [
    (dict(detection_ap50=1.0), "detection_ap50"), (dict(cls_cosine=0.0), "cls_cosine"),
    (dict(headroom=0.0), "headroom"), (dict(validation_images=2, ranking_images=3), "ranking_images")])
def test_bad_targets(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AccuracyTarget(**kwargs)


def test_every_backend_has_the_same_int8_defaults_and_vocabulary():
    from converters import OnnxExporter, OpenVinoExporter, TfliteExporter

    expected = {"int8_mode": "accuracy-aware", "accuracy_target": AccuracyTarget().describe()}
    for cls in (OnnxExporter, OpenVinoExporter, TfliteExporter):
        assert expected.items() <= cls().options("int8").items(), cls.name
        assert cls(accuracy_aware=False).options("int8")["int8_mode"] == "full"
        assert "accuracy_target" not in cls(accuracy_aware=False).options("int8")
        custom = AccuracyTarget(detection_ap50=0.9)
        assert cls(accuracy_target=custom).options("int8")["accuracy_target"] == custom.describe()


# ------------------------------------------------------------------------------------ the cosine


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("side", ["reference", "output"])
def test_cosine_of_non_finite_input_is_nan_and_fails_everywhere(bad, side):
    """One behaviour: NaN, which check_parity fails, the manifest records as null, and the INT8
    target counts as infinitely short."""
    ref, out = np.ones((2, 5), np.float32), np.ones((2, 5), np.float32)
    (ref if side == "reference" else out)[1, 3] = bad
    assert math.isnan(cosine([ref], [out]))
    figures = compare([ref], [ref], [out], [out])
    assert figures["cls_cosine"] is None and figures["box_cosine"] is None  # JSON null
    assert any("cls_cosine" in f for f in check_parity(figures, "int8"))
    assert AccuracyTarget().shortfall({"detection_ap50": 1.0, "cls_cosine": cosine([ref], [out]),
                                       "box_cosine": 1.0}) == math.inf


def test_cosine_values():
    a = np.array([1.0, 2.0, 3.0], np.float32)
    assert cosine([a], [2 * a]) == pytest.approx(1.0)
    assert cosine([a], [-a]) == pytest.approx(-1.0)
    assert cosine([a[:1], a[1:]], [a]) == pytest.approx(1.0)  # flattened and concatenated
    assert cosine([np.zeros(3)], [np.zeros(3)]) == 1.0 and cosine([np.zeros(3)], [a]) == 0.0
    with pytest.raises(ValueError):
        cosine([a], [a[:2]])
