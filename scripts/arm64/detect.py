"""Run every artifact of a model directory over a fixed set of frames and write the detections as
JSON: the half of the arm64 check that runs on both sides (the x86 venv and the emulated arm64
one), with the runtime only (edgedet, numpy, OpenCV, the inference runtimes; never torch).

    python scripts/arm64/detect.py --models DIR --frames DIR --out detections.json \
        [--budget-ms 1e6 --budget-backend onnxruntime]

Each artifact is served by :class:`edgedet.Detector` exactly as an application would
(``Detector(variant=..., backend=..., precision=...)``); one that cannot be loaded or run here is
recorded with its error instead of stopping the run, so the comparer can say which backend fails
on which platform. ``--budget-ms`` also runs the budgeted selection (``Detector(budget_ms=...)``)
and records what it chose.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgedet.backends import BackendError, available_backends, runtime_version
from edgedet.detector import Detector, find_artifacts
from edgedet.detections import Detections

log = logging.getLogger("edgedet.arm64.detect")

#: Detections are kept down to this score, below the runtime's default (0.3): the comparer needs
#: the low-scoring ones to rank INT8 detections (AP50) and to match a box whose score lands just
#: under 0.3 on one side.
SCORE_THRESHOLD = 0.05


def load_frames(frames_dir: Path) -> list[tuple[str, np.ndarray]]:
    """The frames (PNG, lossless: both sides see the same pixels), in name order."""
    paths = sorted(frames_dir.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no *.png frames in {frames_dir}")
    frames = []
    for path in paths:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise FileNotFoundError(f"cannot read {path}")
        frames.append((path.name, frame))
    return frames


def _as_json(det: Detections) -> dict[str, list]:
    return {"boxes": det.xyxy.astype(float).round(4).tolist(), "scores": det.confidence.astype(float).tolist(),
            "classes": det.class_id.astype(int).tolist()}


def platform_info() -> dict[str, Any]:
    """The machine, Python, the runtimes' versions, and whether torch is importable (it must not be
    on a device install)."""
    runtimes = {}
    for name in available_backends():
        try:
            runtimes[name] = runtime_version(name)
        except BackendError as exc:
            runtimes[name] = f"error: {exc}"
    return {"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
            "opencv": cv2.__version__, "runtimes": runtimes,
            "torch_importable": importlib.util.find_spec("torch") is not None}


def run_artifacts(models: Path, frames: list[tuple[str, np.ndarray]],
                  backend: str | None = None) -> dict[str, dict[str, Any]]:
    """``{artifact name: {variant, backend, precision, seconds, frames: [...] | error}}``, for the
    artifacts of ``backend`` (all when ``None``)."""
    results: dict[str, dict[str, Any]] = {}
    for artifact in find_artifacts(models):
        m = artifact.manifest
        if backend is not None and m.backend != backend:
            continue
        entry: dict[str, Any] = {"variant": m.variant, "backend": m.backend, "precision": m.precision,
                                 "random_weights": m.weights.random}
        started = time.perf_counter()
        try:
            detector = Detector(variant=m.variant, models=models, backend=m.backend, precision=m.precision,
                                profile_cache=False, score_threshold=SCORE_THRESHOLD)
            entry["frames"] = {name: _as_json(detector(frame)) for name, frame in frames}
        except Exception as exc:  # noqa: BLE001 - recorded: the report says which backend fails where
            log.error("%s: %s: %s", artifact.name, type(exc).__name__, exc)
            entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["seconds"] = round(time.perf_counter() - started, 2)
        log.info("%s: %s in %.1f s", artifact.name, "error" if "error" in entry else "ok", entry["seconds"])
        results[artifact.name] = entry
    return results


def run_budget(models: Path, budget_ms: float, backend: str, precision: str,
               frame_size: tuple[int, int]) -> dict[str, Any]:
    """The budgeted selection: which artifact ``Detector(budget_ms=...)`` serves, and its profile.

    One warm-up and one timed run per artifact: under emulation the timings mean nothing, the
    code path (measure, walk up in φ, pick) is what is checked.
    """
    started = time.perf_counter()
    detector = Detector(budget_ms=budget_ms, models=models, backend=backend, precision=precision,
                        profile_cache=False, frame_size=frame_size, warmup=1, runs=1)
    return {"chosen": detector.artifact.name, "variant": detector.variant, "backend": detector.backend,
            "precision": detector.precision, "profile": str(detector.profile),
            "seconds": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="directory of artifacts (an unpacked bundle)")
    parser.add_argument("--frames", type=Path, required=True, help="directory of *.png frames")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--backend", help="only the artifacts of this backend (one process per runtime: "
                                          "a runtime that crashes the process takes only its own artifacts)")
    parser.add_argument("--budget-ms", type=float, help="also run Detector(budget_ms=...) and record its choice")
    parser.add_argument("--budget-backend", default="auto", help="backend for the budgeted selection")
    parser.add_argument("--budget-precision", default="auto", help="precision for the budgeted selection")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    frames = load_frames(args.frames)
    report: dict[str, Any] = {"platform": platform_info(), "frames": [name for name, _ in frames],
                              "score_threshold": SCORE_THRESHOLD, "artifacts": run_artifacts(args.models, frames, args.backend)}
    if args.budget_ms is not None:
        height, width = frames[0][1].shape[:2]
        try:
            report["budget"] = run_budget(args.models, args.budget_ms, args.budget_backend, args.budget_precision,
                                          (width, height))
        except Exception as exc:  # noqa: BLE001 - recorded for the comparer
            log.error("budgeted selection: %s: %s", type(exc).__name__, exc)
            report["budget"] = {"error": f"{type(exc).__name__}: {exc}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
