"""Compare the detections of two platforms (``scripts/arm64/detect.py``'s JSON): the arm64 ones
against x86's as the reference, per artifact.

Detections are matched by IoU, not by list position (``converters.verify.match_detections``, the
matcher behind the converter's own INT8 gate): greedy, highest score first, one-to-one, same class,
IoU >= 0.5. A reference detection counts from the runtime's default score threshold (0.3); both
sides report detections down to 0.05 so that a box scoring 0.3001 on one side and 0.2999 on the
other still finds its partner.

* Exact artifacts (fp32, fp16): every detection at >= 0.3 on either side has a partner; over the
  pairs, the smallest IoU, the largest coordinate difference (pixels) and score difference.
* INT8: AP50 of arm64's detections (all of them, ranked by score) against x86's at >= 0.3
  (``converters.verify.average_precision``, pooled over frames) - what the converter measures
  against PyTorch, here between two CPUs running the same quantized file.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from converters.verify import (DETECTION_IOU, DETECTION_SCORE, RANDOM_WEIGHT_THRESHOLDS, THRESHOLDS,
                               average_precision, box_iou, match_detections)

#: Exact artifacts: the issue's bar (same kernels' maths in float; only summation order differs).
FP32_MIN_IOU = 0.99
FP32_MAX_SCORE_DIFF = 1e-3


def int8_min_ap50(random_weights: bool) -> float:
    """INT8 floor between platforms: the converter's own INT8 gate (detection AP50 against FP32:
    0.9 for trained weights, 0.5 for random ones). The same quantized file on two CPUs differs
    where integer kernels round differently (requantization of the int32 accumulators, x86's
    u8s8 int16 pair sums); through an untrained network those one-step differences grow as
    quantization's own do, so a platform may move INT8 detections as far as the converter lets
    quantization move them, and no further. Measured x86 vs emulated arm64 (random lite0/D0
    weights, 2 frames): 0.81-0.93."""
    table = RANDOM_WEIGHT_THRESHOLDS if random_weights else THRESHOLDS
    return table["int8"]["detection_ap50"][1]


#: The floor for trained weights (the stricter one).
INT8_MIN_AP50 = int8_min_ap50(False)


@dataclass
class Agreement:
    """How one artifact's detections on one platform agree with the reference platform's."""

    artifact: str
    backend: str
    precision: str
    reference_detections: int  # at >= DETECTION_SCORE, all frames
    detections: int
    missing: int  # reference detections (>= 0.3) without a partner
    extra: int  # detections (>= 0.3) without a reference partner
    min_iou: float  # over matched pairs with a score >= 0.3 on either side (1.0 when none)
    max_box_px: float  # largest coordinate difference of those pairs, pixels
    max_score_diff: float
    ap50: float  # arm64 ranked against the reference at >= 0.3
    random_weights: bool = False
    #: INT8 only: AP50 against the reference platform's FP32 detections, of the reference's INT8
    #: and of this platform's INT8 (the converter's INT8 gate, as measured on each platform).
    ap50_vs_fp32_reference: float | None = None
    ap50_vs_fp32: float | None = None
    error: str | None = None

    @property
    def min_ap50(self) -> float:
        return int8_min_ap50(self.random_weights)

    @property
    def exact(self) -> bool:
        return self.precision in ("fp32", "fp16")

    def failures(self) -> list[str]:
        """Why this artifact does not agree (empty when it does)."""
        if self.error:
            return [self.error]
        if self.exact:
            out = []
            if self.missing or self.extra:
                out.append(f"{self.missing} missing / {self.extra} extra detections")
            if self.min_iou < FP32_MIN_IOU:
                out.append(f"box IoU {self.min_iou:.4f} < {FP32_MIN_IOU}")
            if self.max_score_diff > FP32_MAX_SCORE_DIFF:
                out.append(f"score difference {self.max_score_diff:.2e} > {FP32_MAX_SCORE_DIFF:g}")
            return out
        out = [f"INT8 AP50 {self.ap50:.4f} < {self.min_ap50}"] if self.ap50 < self.min_ap50 else []
        if self.ap50_vs_fp32 is not None and self.ap50_vs_fp32 < self.min_ap50:
            out.append(f"INT8 AP50 against FP32 {self.ap50_vs_fp32:.4f} < {self.min_ap50} (the converter's gate)")
        return out


def _arrays(frame: Mapping[str, list]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.asarray(frame["boxes"], np.float64).reshape(-1, 4)
    scores = np.asarray(frame["scores"], np.float64)
    classes = np.asarray(frame["classes"], np.int64)
    order = np.argsort(-scores, kind="stable")  # the matcher ranks by score
    return boxes[order], scores[order], classes[order]


def _measurable(boxes: np.ndarray) -> np.ndarray:
    """Boxes with at least one pixel of width and height, for IoU only. A detection in the
    letterbox padding is clipped to the frame's edge with zero height or width (random weights
    make many): its IoU with itself would be 0, and it would never find its partner."""
    out = boxes.copy()
    out[:, 2:] = np.maximum(out[:, 2:], out[:, :2] + 1.0)
    return out


def compare_artifact(name: str, reference: Mapping[str, Any], other: Mapping[str, Any]) -> Agreement:
    """Agreement of ``other``'s detections of one artifact with ``reference``'s (detect.py entries)."""
    precision = reference.get("precision", other.get("precision", "?"))
    backend = reference.get("backend", other.get("backend", "?"))
    for side, entry in (("reference", reference), ("other", other)):
        if "error" in entry or "frames" not in entry:
            return Agreement(name, backend, precision, 0, 0, 0, 0, 0.0, float("inf"), float("inf"), 0.0,
                             error=f"{side}: {entry.get('error', 'not run')}")
    ious: list[float] = []
    box_px: list[float] = []
    score_diffs: list[float] = []
    ranked: list[tuple[np.ndarray, np.ndarray]] = []
    truths = n_ref = n_got = missing = extra = 0
    for frame, ref_frame in reference["frames"].items():
        want_px = _arrays(ref_frame)
        got_px = _arrays(other["frames"][frame])
        want = (_measurable(want_px[0]), *want_px[1:])
        got = (_measurable(got_px[0]), *got_px[1:])
        # Pairs over everything both sides kept (>= 0.05): a partner just under 0.3 still counts.
        pair = match_detections(got, want, DETECTION_IOU)
        strong_ref = want[1] >= DETECTION_SCORE
        strong_got = got[1] >= DETECTION_SCORE
        n_ref += int(strong_ref.sum())
        n_got += int(strong_got.sum())
        partnered = np.zeros(len(want[0]), bool)
        partnered[pair[pair >= 0]] = True
        missing += int((strong_ref & ~partnered).sum())
        extra += int((strong_got & (pair < 0)).sum())
        for i, j in enumerate(pair):
            if j >= 0 and (strong_got[i] or strong_ref[j]):
                ious.append(float(box_iou(got[0][i], want[0][j])[0, 0]))
                box_px.append(float(np.abs(got_px[0][i] - want_px[0][j]).max()))
                score_diffs.append(abs(float(got[1][i] - want[1][j])))
        # AP50 as the converter computes it: reference at >= 0.3 is the ground truth.
        truth = tuple(a[strong_ref] for a in want)
        ranked.append((got[1], match_detections(got, truth, DETECTION_IOU) >= 0))
        truths += len(truth[0])
    return Agreement(name, backend, precision, n_ref, n_got, missing, extra,
                     min(ious, default=1.0), max(box_px, default=0.0), max(score_diffs, default=0.0),
                     average_precision(ranked, truths), bool(reference.get("random_weights", False)))


def compare_reports(reference: Mapping[str, Any], other: Mapping[str, Any]) -> list[Agreement]:
    """One :class:`Agreement` per artifact of the reference report (detect.py JSON)."""
    if reference["frames"] != other["frames"]:
        raise ValueError(f"the two runs saw different frames: {reference['frames']} vs {other['frames']}")
    missing = {"error": "not in this run"}
    agreements = []
    for name, entry in sorted(reference["artifacts"].items()):
        agreement = compare_artifact(name, entry, other["artifacts"].get(name, missing))
        fp32 = reference["artifacts"].get(name.replace("-int8", "-fp32"))
        if entry.get("precision") == "int8" and fp32 is not None and not agreement.error and "frames" in fp32:
            agreement.ap50_vs_fp32_reference = compare_artifact(name, fp32, entry).ap50
            agreement.ap50_vs_fp32 = compare_artifact(name, fp32, other["artifacts"][name]).ap50
        agreements.append(agreement)
    return agreements


def table(agreements: list[Agreement]) -> str:
    """A Markdown table of the agreements (README- and log-friendly)."""
    lines = ["| artifact | x86 dets | arm64 dets | unmatched x86/arm64 | min IoU | max box Δ px "
             "| max score Δ | INT8 AP50 arm64 vs x86 | INT8 AP50 vs x86 FP32: x86 / arm64 | verdict |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for a in agreements:
        if a.error:
            lines.append(f"| {a.artifact} | | | | | | | | | error: {a.error} |")
            continue
        ap = "" if a.exact else f"{a.ap50:.3f} (≥ {a.min_ap50:g})"
        vs = (f"{a.ap50_vs_fp32_reference:.3f} / {a.ap50_vs_fp32:.3f}" if a.ap50_vs_fp32 is not None else "")
        verdict = "; ".join(a.failures()) or "ok"
        lines.append(f"| {a.artifact} | {a.reference_detections} | {a.detections} | "
                     f"{a.missing}/{a.extra} | {a.min_iou:.5f} | {a.max_box_px:.3g} | {a.max_score_diff:.2e} | "
                     f"{ap} | {vs} | {verdict} |")
    return "\n".join(lines)


def as_dicts(agreements: list[Agreement]) -> list[dict[str, Any]]:
    return [{**asdict(a), "failures": a.failures()} for a in agreements]
