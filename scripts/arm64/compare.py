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

from converters.verify import DETECTION_IOU, DETECTION_SCORE, average_precision, box_iou, match_detections

#: Exact artifacts: the issue's bar (same kernels' maths in float; only summation order differs).
FP32_MIN_IOU = 0.99
FP32_MAX_SCORE_DIFF = 1e-3
#: INT8 agreement floor between platforms. The same quantized file on two CPUs differs only where
#: integer kernels requantize differently (rounding of the int32 accumulators' rescale, a fused
#: vs an unfused activation), a far smaller change than quantization itself, which the converter
#: already allows down to AP50 0.9 (trained) / 0.5 (random weights) against FP32. Measured between
#: x86 and emulated arm64 on realistic random lite0/D0 weights: see README "Supported platforms".
INT8_MIN_AP50 = 0.9


@dataclass
class Agreement:
    """How one artifact's detections on one platform agree with the reference platform's."""

    artifact: str
    precision: str
    reference_detections: int  # at >= DETECTION_SCORE, all frames
    detections: int
    missing: int  # reference detections (>= 0.3) without a partner
    extra: int  # detections (>= 0.3) without a reference partner
    min_iou: float  # over matched pairs with a score >= 0.3 on either side (1.0 when none)
    max_box_px: float  # largest coordinate difference of those pairs, pixels
    max_score_diff: float
    ap50: float  # arm64 ranked against the reference at >= 0.3
    error: str | None = None

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
        return [f"INT8 AP50 {self.ap50:.4f} < {INT8_MIN_AP50}"] if self.ap50 < INT8_MIN_AP50 else []


def _arrays(frame: Mapping[str, list]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.asarray(frame["boxes"], np.float64).reshape(-1, 4)
    scores = np.asarray(frame["scores"], np.float64)
    classes = np.asarray(frame["classes"], np.int64)
    order = np.argsort(-scores, kind="stable")  # the matcher ranks by score
    return boxes[order], scores[order], classes[order]


def compare_artifact(name: str, reference: Mapping[str, Any], other: Mapping[str, Any]) -> Agreement:
    """Agreement of ``other``'s detections of one artifact with ``reference``'s (detect.py entries)."""
    precision = reference.get("precision", other.get("precision", "?"))
    for side, entry in (("reference", reference), ("other", other)):
        if "error" in entry or "frames" not in entry:
            return Agreement(name, precision, 0, 0, 0, 0, 0.0, float("inf"), float("inf"), 0.0,
                             error=f"{side}: {entry.get('error', 'not run')}")
    ious: list[float] = []
    box_px: list[float] = []
    score_diffs: list[float] = []
    ranked: list[tuple[np.ndarray, np.ndarray]] = []
    truths = n_ref = n_got = missing = extra = 0
    for frame, ref_frame in reference["frames"].items():
        want = _arrays(ref_frame)
        got = _arrays(other["frames"][frame])
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
                box_px.append(float(np.abs(got[0][i] - want[0][j]).max()))
                score_diffs.append(abs(float(got[1][i] - want[1][j])))
        # AP50 as the converter computes it: reference at >= 0.3 is the ground truth.
        truth = tuple(a[strong_ref] for a in want)
        ranked.append((got[1], match_detections(got, truth, DETECTION_IOU) >= 0))
        truths += len(truth[0])
    return Agreement(name, precision, n_ref, n_got, missing, extra,
                     min(ious, default=1.0), max(box_px, default=0.0), max(score_diffs, default=0.0),
                     average_precision(ranked, truths))


def compare_reports(reference: Mapping[str, Any], other: Mapping[str, Any]) -> list[Agreement]:
    """One :class:`Agreement` per artifact of the reference report (detect.py JSON)."""
    if reference["frames"] != other["frames"]:
        raise ValueError(f"the two runs saw different frames: {reference['frames']} vs {other['frames']}")
    return [compare_artifact(name, entry, other["artifacts"].get(name, {"error": "not in this run"}))
            for name, entry in sorted(reference["artifacts"].items())]


def table(agreements: list[Agreement]) -> str:
    """A Markdown table of the agreements (README- and log-friendly)."""
    lines = ["| artifact | precision | x86 dets | arm64 dets | missing/extra | min IoU | max box Δ px "
             "| max score Δ | INT8 AP50 | verdict |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for a in agreements:
        if a.error:
            lines.append(f"| {a.artifact} | {a.precision} | | | | | | | | error: {a.error} |")
            continue
        ap = "" if a.exact else f"{a.ap50:.4f}"
        verdict = "; ".join(a.failures()) or "ok"
        lines.append(f"| {a.artifact} | {a.precision} | {a.reference_detections} | {a.detections} | "
                     f"{a.missing}/{a.extra} | {a.min_iou:.5f} | {a.max_box_px:.3g} | {a.max_score_diff:.2e} | "
                     f"{ap} | {verdict} |")
    return "\n".join(lines)


def as_dicts(agreements: list[Agreement]) -> list[dict[str, Any]]:
    return [{**asdict(a), "failures": a.failures()} for a in agreements]
