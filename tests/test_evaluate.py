"""edgedet.evaluate: COCO mAP of detections, of a PyTorch model and of an exported ONNX artifact.

The artifact test exports a lite0 checkpoint with the converters and checks that the PyTorch path
(evaluate_model) and the runtime path (evaluate_artifact, i.e. edgedet.Detector's pipeline) give
the same detections and the same mAP.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedet.data.synthetic import CLASSES, SyntheticConfig, generate_coco
from edgedet.detections import Detections
from edgedet.evaluate import METRIC_KEYS, category_mapping, coco_map, evaluate_artifact
from edgedet.model.evaluate import evaluate_model
from edgedet.model import create_model
from edgedet.model.checkpoint import save_checkpoint


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads under contention are far slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def val_split(tmp_path_factory):
    """6 synthetic 240x180 images (not square: the letterbox mapping matters)."""
    root = tmp_path_factory.mktemp("val")
    ann = generate_coco(root, num_images=6, config=SyntheticConfig(image_size=(240, 180), seed=11),
                        split_name="val", progress=False)
    return ann, root / "val"


def _gt_detections(ann: Path, shift: float = 0.0) -> dict[int, Detections]:
    data = json.loads(ann.read_text())
    cat_index = {c["id"]: k for k, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    per_image: dict[int, list] = {img["id"]: [] for img in data["images"]}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        per_image[a["image_id"]].append(([x + shift * w, y, x + w + shift * w, y + h], cat_index[a["category_id"]]))
    return {i: Detections([b for b, _ in v], [1.0] * len(v), [c for _, c in v]) if v else Detections.empty()
            for i, v in per_image.items()}


def test_ground_truth_scores_one(val_split):
    ann, _ = val_split
    metrics = coco_map(_gt_detections(ann), ann)
    assert set(metrics) == set(METRIC_KEYS)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)


def test_coco_result_dicts_are_accepted(val_split):
    ann, _ = val_split
    data = json.loads(ann.read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in data["annotations"]]
    assert coco_map(results, ann)["AP"] == pytest.approx(1.0)
    assert coco_map([], ann)["AP"] == 0.0


def test_shifted_boxes_score_less(val_split):
    ann, _ = val_split
    shifted = coco_map(_gt_detections(ann, shift=0.2), ann)  # IoU 0.67: counts at 0.5, not at 0.75
    assert 0.0 < shifted["AP"] < 1.0
    assert shifted["AP50"] == pytest.approx(1.0) and shifted["AP75"] == pytest.approx(0.0)
    # Wrong classes find nothing.
    wrong = {i: Detections(d.xyxy, d.confidence, (d.class_id + 1) % len(CLASSES)) for i, d in
             _gt_detections(ann).items()}
    assert coco_map(wrong, ann)["AP"] < 0.2


def test_pycocotools_fallback_agrees(val_split, monkeypatch):
    ann, _ = val_split
    detections = _gt_detections(ann, shift=0.15)
    fast = coco_map(detections, ann)
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import now fails
    slow = coco_map(detections, ann)
    assert slow == pytest.approx(fast, abs=1e-6)


def test_category_mapping_rules():
    cats = [{"id": 5, "name": "b"}, {"id": 2, "name": "a"}, {"id": 9, "name": "c"}]
    assert category_mapping(3, cats) == [2, 5, 9]  # ascending ids, as edgedet.model.training numbers classes
    assert category_mapping(3, cats, labels=["c", "a", "b"]) == [9, 2, 5]  # by name
    assert category_mapping(3, cats, category_ids=[9, 9, 2]) == [9, 9, 2]
    assert category_mapping(90, cats) == list(range(1, 91))  # effdet's COCO convention
    with pytest.raises(ValueError, match="category_ids"):
        category_mapping(4, cats)


def test_evaluate_model_on_an_untrained_model(val_split):
    ann, images = val_split
    model = create_model("lite0", num_classes=len(CLASSES), image_size=128).train()
    metrics, detections = evaluate_model(model, ann, images, batch_size=4, return_detections=True)
    assert set(metrics) == set(METRIC_KEYS)
    assert all(-1.0 <= v <= 1.0 for v in metrics.values())
    assert model.training  # mode restored
    assert set(detections) == {1, 2, 3, 4, 5, 6}
    det = next(iter(detections.values()))
    assert 0 < len(det) <= 100 and det.xyxy[:, 2].max() <= 240 and det.xyxy[:, 3].max() <= 180


def test_evaluate_module_does_not_import_torch():
    code = "import sys, edgedet.evaluate; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------- PyTorch vs an exported artifact

def _pseudo_ground_truth(ann: Path, detections: dict[int, Detections], out: Path) -> Path:
    """The file's images with the model's own top detections as ground truth (so mAP is ~1)."""
    data = json.loads(ann.read_text())
    # Random weights put many boxes on the frame's edge, clipped flat: only proper boxes qualify.
    def proper(d: Detections) -> np.ndarray:
        return ((d.xyxy[:, 2] - d.xyxy[:, 0]) >= 4) & ((d.xyxy[:, 3] - d.xyxy[:, 1]) >= 4)

    scores = np.concatenate([d.confidence[proper(d)] for d in detections.values()])
    threshold = np.sort(scores)[-30]  # the 30 best proper detections of the split
    anns = []
    for image_id, det in detections.items():
        for box, score, cls, ok in zip(det.xyxy.tolist(), det.confidence.tolist(), det.class_id.tolist(),
                                       proper(det)):
            if ok and score >= threshold:
                x1, y1, x2, y2 = box
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cls + 1,
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    data["annotations"] = anns
    out.write_text(json.dumps(data))
    return out


def test_torch_and_onnx_artifact_give_the_same_map(val_split, tmp_path):
    converters = pytest.importorskip("converters")  # part of this repository
    from converters.weights import realistic_random_

    ann, images = val_split
    torch.manual_seed(0)
    model = create_model("lite0", num_classes=len(CLASSES))
    realistic_random_(model, seed=0)  # spread-out outputs, so detections are not ties
    weights = save_checkpoint(model, tmp_path / "lite0.pth", metadata={"variant": "lite0",
                                                                       "class_names": list(CLASSES)})
    report = converters.convert(variants="lite0", formats="onnx", precisions="fp32", weights=str(weights),
                                out_dir=tmp_path / "exports", labels=list(CLASSES), verify_images=1)
    assert report.ok, report.table()

    _, torch_dets = evaluate_model(model, ann, images, return_detections=True)
    pseudo = _pseudo_ground_truth(ann, torch_dets, tmp_path / "pseudo.json")
    torch_metrics = coco_map(torch_dets, pseudo)  # what evaluate_model(model, pseudo, ...) returns
    onnx_metrics, onnx_dets = evaluate_artifact(tmp_path / "exports", pseudo, images, threads=1,
                                                return_detections=True)

    # The model finds its own detections (flat edge boxes, ranked among them, are the false positives).
    assert torch_metrics["AP"] > 0.5
    from edgedet.detector import Detector

    detector = Detector(variant="lite0", models=tmp_path / "exports", threads=1, profile_cache=False)
    assert evaluate_artifact(detector, pseudo, images) == onnx_metrics  # a Detector works as well
    for key in METRIC_KEYS:
        assert onnx_metrics[key] == pytest.approx(torch_metrics[key], abs=1e-3), key
    for image_id, det in torch_dets.items():
        top = det.confidence > 0.05
        other = onnx_dets[image_id]
        np.testing.assert_allclose(other.xyxy[: top.sum()], det.xyxy[top], atol=0.05)
        np.testing.assert_allclose(other.confidence[: top.sum()], det.confidence[top], atol=1e-4)
        np.testing.assert_array_equal(other.class_id[: top.sum()], det.class_id[top])
