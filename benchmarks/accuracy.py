"""COCO mAP of a benchmark row, through :mod:`edgedet.evaluate` (when it is there), cached.

mAP is computed only where it means something: for trained weights (a reference checkpoint, the
published ones, or a checkpoint path) on a COCO split — the reference run's validation split from
its checkpoint metadata, or ``--coco-ann``/``--coco-images``. Random weights get no mAP.

The figure depends on the artifact file, the data and the runtime, not on the run, so results
are cached in ``<models dir>/map-cache.json`` keyed by (artifact sha256, annotation file sha256,
image folder, image limit, runtime version, device): a warm benchmark run re-evaluates nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedet._atomic import atomic_write_text
from edgedet.hub import sha256_file

__all__ = ["EvalSet", "MapCache", "evaluate_detector", "evaluate_torch", "evaluation_available"]

log = logging.getLogger(__name__)

CACHE_NAME = "map-cache.json"
CACHE_VERSION = 1


@dataclass(frozen=True)
class EvalSet:
    """A COCO split to score on: annotations, images, optional first-N limit and class mapping."""

    ann: Path
    images: Path
    source: str  # "reference val split" | "--coco-ann"
    limit: int | None = None
    category_ids: tuple[int, ...] | None = None

    def key_parts(self) -> dict[str, Any]:
        return {"ann_sha256": sha256_file(self.ann), "images": str(self.images.resolve()), "limit": self.limit,
                "category_ids": None if self.category_ids is None else list(self.category_ids)}

    def describe(self) -> dict[str, Any]:
        return {"ann": str(self.ann), "images": str(self.images), "source": self.source, "limit": self.limit}


def evaluation_available() -> str | None:
    """None if mAP can be computed here, else why not."""
    try:
        import edgedet.evaluate  # noqa: F401
    except ImportError as exc:
        return f"edgedet.evaluate is not available ({exc})"
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        try:
            import pycocotools  # noqa: F401
        except ImportError:
            return "COCO evaluation needs faster-coco-eval or pycocotools (pip install 'edgedet[eval]')"
    return None


class MapCache:
    """mAP results persisted as one JSON file; an unreadable file is ignored with a warning."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, Any] = {}
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("version") == CACHE_VERSION and isinstance(data.get("entries"), dict):
                    self._entries = data["entries"]
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable mAP cache %s (%s)", path, exc)

    @staticmethod
    def key(**parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        return dict(entry) if entry is not None else None

    def put(self, key: str, metrics: dict[str, Any]) -> None:
        self._entries[key] = metrics
        if self.path is not None:
            atomic_write_text(self.path, json.dumps({"version": CACHE_VERSION, "entries": self._entries}, indent=1))


def _result(metrics: dict[str, float], eval_set: EvalSet, seconds: float, cached: bool) -> dict[str, Any]:
    return {**{k: round(float(v), 5) for k, v in metrics.items()}, "source": eval_set.source,
            "limit": eval_set.limit, "seconds": round(seconds, 1), "cached": cached}


def evaluate_detector(detector: Any, eval_set: EvalSet, cache: MapCache, *, runtime: str,
                      device: str) -> dict[str, Any]:
    """COCO metrics of a loaded :class:`edgedet.Detector`'s artifact (cached by artifact hash)."""
    import time

    from edgedet.evaluate import evaluate_artifact

    key = MapCache.key(kind="artifact", artifact=detector.artifact.sha256, runtime=runtime, device=device,
                       **eval_set.key_parts())
    hit = cache.get(key)
    if hit is not None:
        hit["cached"] = True
        return hit
    started = time.perf_counter()
    metrics = evaluate_artifact(detector, eval_set.ann, eval_set.images, limit=eval_set.limit,
                                category_ids=list(eval_set.category_ids) if eval_set.category_ids else None)
    result = _result(metrics, eval_set, time.perf_counter() - started, cached=False)
    cache.put(key, {**result, "cached": False})
    return result


def evaluate_torch(model: Any, eval_set: EvalSet, cache: MapCache, *, weights_key: str,
                   labels: tuple[str, ...] | None, device: str) -> dict[str, Any]:
    """COCO metrics of the PyTorch eager model (cached by checkpoint hash and image size)."""
    import time

    import torch

    from edgedet.model.evaluate import evaluate_model

    key = MapCache.key(kind="pytorch", weights=weights_key, size=int(model.image_size),
                       torch=torch.__version__, device=device, **eval_set.key_parts())
    hit = cache.get(key)
    if hit is not None:
        hit["cached"] = True
        return hit
    started = time.perf_counter()
    metrics = evaluate_model(model, eval_set.ann, eval_set.images, labels=labels, limit=eval_set.limit,
                             category_ids=list(eval_set.category_ids) if eval_set.category_ids else None)
    result = _result(metrics, eval_set, time.perf_counter() - started, cached=False)
    cache.put(key, {**result, "cached": False})
    return result
