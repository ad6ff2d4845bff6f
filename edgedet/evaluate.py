"""COCO box mAP of detections, of a PyTorch model and of an exported artifact.

* :func:`coco_map` scores detections against a COCO annotation file with faster-coco-eval
  (pycocotools if that is missing): ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` (COCO's
  ``stats[0:6]``; ``-1`` where the file has no object of that size).
* :func:`evaluate_artifact` runs an exported artifact through :class:`edgedet.Detector`'s pipeline.
* :func:`evaluate_directory` scores every artifact of a directory, its images sharded over tasks run
  here or on a Ray cluster (:mod:`edgedet.cluster`), merged and scored once: the local figures.
* :func:`run_and_score` is the loop both use: frames read with OpenCV, a ``detect`` callable,
  COCO metrics. :func:`edgedet.model.evaluate.evaluate_model` runs a PyTorch model through it
  with the same pre/post-processing, so a model and its artifacts give the same mAP for the same
  weights.

Scores follow the mAP convention: a low score threshold (0.001) and 100 detections per image.
Model class ``k`` is mapped back to the file's category ids (see :func:`category_mapping`).

numpy and OpenCV only (torch-free, like the rest of the runtime).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import cv2
import numpy as np

from edgedet._progress import progress_bar
from edgedet.detections import Detections

if TYPE_CHECKING:
    from edgedet.detector import Detector

__all__ = ["EVAL_SCORE_THRESHOLD", "METRIC_KEYS", "category_mapping", "coco_map", "detect_shard",
           "evaluate_artifact", "evaluate_directory", "load_dataset", "run_and_score", "to_coco_results"]

log = logging.getLogger(__name__)

#: The keys of every metrics dict, in COCO's ``stats`` order.
METRIC_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: The mAP convention: keep nearly every scored box (COCO ranks them; a high threshold lowers AP).
EVAL_SCORE_THRESHOLD = 0.001

AnnSource = str | os.PathLike[str] | Mapping[str, Any]


# --------------------------------------------------------------------------------------- loading

def load_dataset(ann_file: AnnSource) -> dict[str, Any]:
    if isinstance(ann_file, Mapping):
        return dict(ann_file)
    path = Path(ann_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FileNotFoundError(f"cannot read the COCO annotation file {path}: {exc}") from exc
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise ValueError(f"{path} is not a COCO detection file (needs 'images' and 'categories')")
    data.setdefault("annotations", [])
    return data


def category_mapping(num_classes: int, categories: Sequence[Mapping[str, Any]], *,
                     labels: Sequence[str] | None = None,
                     category_ids: Sequence[int] | None = None) -> list[int]:
    """The file's category id of each model class ``0..num_classes-1``.

    In order of preference: ``category_ids`` if given (one id per class); by name, when the
    model's ``labels`` all name categories of the file; the file's ids in ascending order when
    the counts agree (how :mod:`edgedet.model.training` numbers classes); ``class + 1`` for a 90-class COCO
    model (effdet's convention) on a file whose ids are within 1..90.

    Raises ``ValueError`` when none applies.
    """
    file_ids = sorted(int(c["id"]) for c in categories)
    if category_ids is not None:
        ids = [int(c) for c in category_ids]
        if len(ids) != num_classes:
            raise ValueError(f"category_ids has {len(ids)} entries but the model has {num_classes} classes")
        return ids
    if labels is not None and len(labels) == num_classes:
        by_name = {str(c.get("name")): int(c["id"]) for c in categories}
        if all(str(label) in by_name for label in labels):
            return [by_name[str(label)] for label in labels]
    if num_classes == len(file_ids):
        return file_ids
    if num_classes == 90 and file_ids and max(file_ids) <= 90:
        return list(range(1, 91))
    raise ValueError(
        f"cannot map the model's {num_classes} classes to the file's {len(file_ids)} categories "
        f"(ids {file_ids[:10]}{'...' if len(file_ids) > 10 else ''}): pass category_ids=[...] "
        f"(one file category id per model class)")


def to_coco_results(detections: Mapping[int, Detections], mapping: Sequence[int]) -> list[dict[str, Any]]:
    """COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) of detections."""
    results: list[dict[str, Any]] = []
    for image_id, det in detections.items():
        if len(det) == 0:
            continue
        xyxy = det.xyxy.astype(np.float64)
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        for box, score, cls in zip(xywh.tolist(), det.confidence.tolist(), det.class_id.tolist()):
            if cls >= len(mapping):
                raise ValueError(f"class id {cls} has no category (mapping of {len(mapping)} classes)")
            results.append({"image_id": int(image_id), "category_id": int(mapping[cls]),
                            "bbox": [round(v, 3) for v in box], "score": float(score)})
    return results


# -------------------------------------------------------------------------------------- scoring

def _cocoeval(gt_data: dict[str, Any], results: list[dict[str, Any]]) -> np.ndarray:
    quiet = contextlib.redirect_stdout(io.StringIO())
    try:
        from faster_coco_eval import COCO, COCOeval_faster

        with quiet:
            gt = COCO(gt_data)
            dt = gt.loadRes([dict(r) for r in results])
            ev = COCOeval_faster(gt, dt, iouType="bbox", print_function=lambda *a, **k: None)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return np.asarray(ev.stats, dtype=np.float64)
    except ImportError:
        pass
    try:
        from pycocotools.coco import COCO as PyCOCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise ImportError("COCO evaluation needs faster-coco-eval or pycocotools: "
                          "pip install 'edgedet[eval]'") from exc
    with quiet:
        gt = PyCOCO()
        gt.dataset = gt_data
        gt.createIndex()
        dt = gt.loadRes([dict(r) for r in results])
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, dtype=np.float64)


def coco_map(detections: Mapping[int, Detections] | Sequence[Mapping[str, Any]], ann_file: AnnSource, *,
             category_ids: Sequence[int] | None = None, num_classes: int | None = None) -> dict[str, float]:
    """COCO box metrics of ``detections`` against ``ann_file`` (a path or a loaded COCO dict).

    ``detections`` is ``{image_id: Detections}`` (boxes in frame pixels; class ids mapped with
    :func:`category_mapping` from the detections' labels, ``category_ids`` or the file; give the
    model's ``num_classes`` when the detections carry no labels) or a list
    of COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh, ``score``). Every image of
    the file counts; one without detections is all misses.

    Returns ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as floats in 0..1 (``-1`` for a size
    range without ground truth).
    """
    data = load_dataset(ann_file)
    image_ids = {int(img["id"]) for img in data["images"]}
    if isinstance(detections, Mapping):
        unknown = [i for i in detections if int(i) not in image_ids]
        if unknown:
            raise ValueError(f"detections for image ids not in the annotation file: {unknown[:10]}")
        dets = list(detections.values())
        labels = next((d.labels for d in dets if d.labels is not None), None)
        if num_classes is None:
            num_classes = len(labels) if labels is not None else (
                len(category_ids) if category_ids is not None else len(data["categories"]))
        if not any(len(d) for d in dets):
            results: list[dict[str, Any]] = []
        else:
            mapping = category_mapping(num_classes, data["categories"], labels=labels,
                                       category_ids=category_ids)
            results = to_coco_results(detections, mapping)
    else:
        results = [dict(r) for r in detections]
        unknown = sorted({int(r["image_id"]) for r in results} - image_ids)
        if unknown:
            raise ValueError(f"results for image ids not in the annotation file: {unknown[:10]}")
    if not data.get("annotations"):
        raise ValueError("the annotation file has no annotations: mAP is undefined")
    if not results:
        return {k: 0.0 for k in METRIC_KEYS}
    stats = _cocoeval(data, results)
    return {k: float(v) for k, v in zip(METRIC_KEYS, stats[: len(METRIC_KEYS)])}


# ------------------------------------------------------------------------------------ inference

def _iter_batches(data: dict[str, Any], images_dir: str | os.PathLike[str], batch_size: int,
                  limit: int | None = None) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    root = Path(images_dir)
    images = data["images"] if limit is None else data["images"][:limit]
    for start in range(0, len(images), max(1, batch_size)):
        chunk = images[start:start + batch_size]
        frames = []
        for img in chunk:
            path = root / img["file_name"]
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                raise FileNotFoundError(f"cannot read image {path} (missing or not an image)")
            frames.append(frame)
        yield [int(img["id"]) for img in chunk], frames


def run_and_score(detect: Callable[[list[np.ndarray]], list[Detections]], data: dict[str, Any],
                   images_dir: str | os.PathLike[str], *, batch_size: int, category_ids: Sequence[int] | None,
                   num_classes: int,
                   progress: bool, desc: str, limit: int | None, return_detections: bool):
    """Read the split's images (BGR, OpenCV) in batches, run ``detect`` on each batch, and score
    the detections with :func:`coco_map`; the loop behind every mAP in edgedet."""
    started = time.perf_counter()
    detections: dict[int, Detections] = {}
    total = len(data["images"]) if limit is None else min(limit, len(data["images"]))
    bar = progress_bar(total, desc, unit="img", enabled=progress, leave=False)
    try:
        for ids, frames in _iter_batches(data, images_dir, batch_size, limit):
            for image_id, det in zip(ids, detect(frames)):
                detections[image_id] = det
            bar.update(len(ids))
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    if limit is not None:
        keep = set(detections)
        data = {**data, "images": [i for i in data["images"] if int(i["id"]) in keep],
                "annotations": [a for a in data["annotations"] if int(a["image_id"]) in keep]}
    metrics = coco_map(detections, data, category_ids=category_ids, num_classes=num_classes)
    log.info("%s: AP %.4f AP50 %.4f on %d images (%.1f s inference)", desc, metrics["AP"],
             metrics["AP50"], len(detections), seconds)
    return (metrics, detections) if return_detections else metrics


def evaluate_artifact(models: str | os.PathLike[str] | Detector, ann_file: AnnSource,
                      images_dir: str | os.PathLike[str], *, variant: str | None = None,
                      backend: str = "auto", precision: str = "auto", threads: int | None = None,
                      score_threshold: float = EVAL_SCORE_THRESHOLD, iou_threshold: float = 0.5,
                      max_detections: int = 100, batch_size: int = 8,
                      category_ids: Sequence[int] | None = None, progress: bool = False,
                      limit: int | None = None, return_detections: bool = False):
    """COCO metrics of an exported artifact, run as :class:`edgedet.Detector` runs it.

    ``models`` is a directory of artifacts (``variant``, ``backend`` and ``precision`` pick one, as
    for ``Detector``; ``variant`` may be left out when the directory holds one variant) or a
    ``Detector`` (its artifact and backend are reused with the evaluation thresholds). Classes are
    mapped to the file's categories by the manifest's labels when they name the file's categories,
    else as :func:`category_mapping` says. Returns what :func:`evaluate_model` returns.
    """
    from edgedet.detector import Detector, Pipeline, find_artifacts

    data = load_dataset(ann_file)
    post = dict(score_threshold=score_threshold, iou_threshold=iou_threshold, max_detections=max_detections)
    if isinstance(models, Detector):
        pipeline = Pipeline(models.artifact, models.pipeline.backend, **post)
        artifact = models.artifact
    else:
        if variant is None:
            variants = sorted({a.manifest.variant for a in find_artifacts(models)})
            if len(variants) > 1:
                raise ValueError(f"{models} holds several variants ({', '.join(variants)}): pass variant=")
            variant = variants[0] if variants else None
        detector = Detector(variant=variant, models=models, backend=backend, precision=precision,
                            threads=threads, profile_cache=False, **post)
        pipeline, artifact = detector.pipeline, detector.artifact
    fixed_batch = artifact.manifest.input.batch_size

    def detect(frames: list[np.ndarray]) -> list[Detections]:
        out: list[Detections] = []
        for start in range(0, len(frames), fixed_batch):
            chunk = frames[start:start + fixed_batch]
            count = len(chunk)
            chunk = chunk + [chunk[-1]] * (fixed_batch - count)  # fixed-batch artifacts
            out.extend(pipeline(chunk)[:count])
        return out

    return run_and_score(detect, data, images_dir, batch_size=batch_size, category_ids=category_ids,
                          num_classes=len(artifact.manifest.labels), progress=progress,
                          desc=f"eval {artifact.name}", limit=limit,
                          return_detections=return_detections)


# ------------------------------------------------------------------------------- many artifacts, sharded

def evaluate_directory(models: str | os.PathLike[str], ann_file: AnnSource, images_dir: str | os.PathLike[str], *,
                       executor: str = "local", ray_address: str | None = None, shards: int = 4,
                       threads: int | None = 1, score_threshold: float = EVAL_SCORE_THRESHOLD,
                       iou_threshold: float = 0.5, max_detections: int = 100, limit: int | None = None,
                       progress: bool = False) -> dict[str, dict[str, float]]:
    """COCO metrics of every artifact under ``models``: ``{artifact name: metrics}``.

    Each artifact's images are split into ``shards`` tasks (``executor="local"``: one after another
    in this process; ``"ray"``: as tasks of the Ray cluster at ``ray_address``). A task gets the
    artifact's files and its images as bytes (no shared file system needed), verifies the files
    against the manifest, and returns its detections; the driver merges them and scores once, so the
    figures are the same as a local run's. ``threads`` per task (1: one per CPU Ray schedules).
    """
    from edgedet.cluster import check_executor, run_tasks
    from edgedet.detector import find_artifacts

    check_executor(executor)
    data = load_dataset(ann_file)
    images = data["images"] if limit is None else data["images"][:limit]
    if limit is not None:
        keep = {int(i["id"]) for i in images}
        data = {**data, "images": images, "annotations": [a for a in data["annotations"] if int(a["image_id"]) in keep]}
    encoded = [(int(img["id"]), _read_bytes(Path(images_dir) / img["file_name"])) for img in images]
    count = max(1, min(shards, len(encoded)))
    chunks = [encoded[i::count] for i in range(count)]
    post = {"score_threshold": score_threshold, "iou_threshold": iou_threshold, "max_detections": max_detections,
            "threads": threads}
    artifacts = find_artifacts(models)
    if not artifacts:
        raise FileNotFoundError(f"no artifacts (*/manifest.json) under {models}")
    jobs, owners = [], []
    for artifact in artifacts:
        files = {name: (artifact.directory / name).read_bytes()
                 for name in ("manifest.json", *artifact.manifest.files)}
        for chunk in chunks:
            jobs.append((files, chunk, post))
            owners.append(artifact)
    outcomes = run_tasks(detect_shard, jobs, executor=executor, address=ray_address, num_cpus=threads or 1,
                         desc="evaluate", progress=progress)
    results: dict[str, dict[str, float]] = {}
    for artifact in artifacts:
        mine = [o for o, owner in zip(outcomes, owners) if owner is artifact]
        failed = [o.error for o in mine if not o.ok]
        if failed:
            raise RuntimeError(f"evaluating {artifact.name}: {len(failed)} of {len(mine)} shards failed: {failed[0]}")
        labels = tuple(artifact.manifest.labels)
        detections = {image_id: Detections(xyxy=xyxy, confidence=conf, class_id=cls, labels=labels)
                      for o in mine for image_id, xyxy, conf, cls in o.value}
        results[artifact.name] = coco_map(detections, data, num_classes=len(labels))
        log.info("eval %s: AP %.4f AP50 %.4f on %d images in %d shards (%s)", artifact.name,
                 results[artifact.name]["AP"], results[artifact.name]["AP50"], len(detections), count, executor)
    return results


def detect_shard(files: Mapping[str, bytes], images: Sequence[tuple[int, bytes]],
                 post: Mapping[str, Any]) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """One evaluation task: write the artifact's ``files`` to a scratch directory, serve it as the
    Detector does, and detect in each encoded image: ``[(image_id, xyxy, confidence, class_id)]``."""
    import tempfile

    from edgedet.detector import Detector
    from edgedet.manifest import MANIFEST_NAME, Manifest

    with tempfile.TemporaryDirectory(prefix="edgedet-eval-") as scratch:
        root = Path(scratch) / "artifact"
        for name, content in files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        m = Manifest.load(root / MANIFEST_NAME)
        detector = Detector(variant=m.variant, models=root, backend=m.backend, precision=m.precision,
                            profile_cache=False, **post)
        batch = m.input.batch_size
        out = []
        for image_id, content in images:
            frame = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
            if frame is None:
                raise ValueError(f"image {image_id} is not a readable image")
            found = detector.pipeline([frame] * batch)[0]
            out.append((image_id, found.xyxy, found.confidence, found.class_id))
        return out


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FileNotFoundError(f"cannot read image {path}: {exc}") from exc
