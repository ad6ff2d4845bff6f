"""edgedet.model.training: anchor matching, focal/Huber loss, data + augmentation, the training loop,
checkpoints, resume and the CLI — real (tiny) training runs, no mocks.

Runs use lite0 at 128 px, 16 synthetic images, batch 4, one torch thread (the machine is shared:
two threads under contention are many times slower than one).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgedet.anchors import encode_boxes, generate_anchors
from edgedet.config import get_config
from edgedet.data.synthetic import CLASSES, SyntheticConfig, generate_splits
from edgedet.model import create_model
from edgedet.model.checkpoint import load_checkpoint, load_metadata
from edgedet.preprocess import preprocess
from edgedet.model.training import (
    Augment,
    CocoDetection,
    DetectionLoss,
    ModelEma,
    TrainConfig,
    Trainer,
    collate,
    focal_loss,
    load_coco_index,
    load_trained,
    lr_at,
    match_anchors,
    train,
)
from edgedet.model.training.cli import main as cli_main
from edgedet.model.training.loss import IGNORE, NEGATIVE, box_iou

SIZE = 128
FAST = dict(batch_size=4, image_size=SIZE, num_threads=1, progress=False, num_workers=0)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """16 train / 8 val synthetic images at the training size."""
    root = tmp_path_factory.mktemp("shapes")
    paths = generate_splits(root, train=16, val=8, config=SyntheticConfig(image_size=SIZE, seed=3),
                            progress=False)
    return {"train_ann": paths["train"], "train_images": root / "train",
            "val_ann": paths["val"], "val_images": root / "val"}


def _data(shapes):
    return (shapes["train_ann"], shapes["train_images"], shapes["val_ann"], shapes["val_images"])


# ------------------------------------------------------------------------------------- matching


def _t(a):
    return torch.tensor(a, dtype=torch.float32)


def test_box_iou_known_values():
    iou = box_iou(_t([[0, 0, 10, 10], [5, 5, 15, 15]]), _t([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 5]]))
    expected = [[1.0, 0.0, 0.5], [25 / 175, 0.0, 0.0]]
    assert torch.allclose(iou, _t(expected), atol=1e-6)


def test_gt_equal_to_an_anchor_is_positive_with_zero_box_target():
    anchors = generate_anchors(get_config("lite0"), SIZE)
    j = 1234
    gt = torch.from_numpy(anchors[j : j + 1].copy())[None]  # [1, 1, 4]
    t = match_anchors(torch.from_numpy(anchors.copy()), gt, torch.tensor([[5]]))
    assert t.classes[0, j] == 5 and t.matched[0, j] == 0
    b, a = t.positive_index
    row = int(torch.nonzero(a == j)[0])
    assert torch.equal(t.box_targets[row], torch.zeros(4))
    # Anchors far from the box are background.
    far = torch.from_numpy(anchors[:, 0] > anchors[j, 2] + 10)
    assert far.any() and bool((t.classes[0, far] == NEGATIVE).all())


def test_matching_bands_positive_ignored_negative():
    anchors = _t([
        [0, 0, 10, 10],  # IoU 1.0  -> positive
        [0, 0, 10, 5.5],  # IoU 0.55 -> positive
        [0, 0, 10, 4.5],  # IoU 0.45 -> ignored
        [0, 0, 10, 3],  # IoU 0.30 -> negative
        [50, 50, 60, 60],  # IoU 0    -> negative
    ])
    gt = _t([[[0, 0, 10, 10]]])
    t = match_anchors(anchors, gt, torch.tensor([[2]]))
    assert t.classes[0].tolist() == [2, 2, IGNORE, NEGATIVE, NEGATIVE]
    b, a = t.positive_index
    assert a.tolist() == [0, 1]
    expected = encode_boxes(np.array([[0, 0, 10, 10]] * 2, np.float32), anchors[[0, 1]].numpy())
    np.testing.assert_allclose(t.box_targets.numpy(), expected, atol=1e-6)


def test_every_gt_claims_its_best_anchor_even_below_the_threshold():
    anchors = _t([[0, 0, 10, 10], [100, 100, 140, 140], [0, 0, 100, 100]])
    # A small box inside anchor 1: IoU 0.25 (< 0.4), yet anchor 1 must become positive for it.
    gt = _t([[[100, 100, 120, 120], [0, 0, 10, 10]]])
    t = match_anchors(anchors, gt, torch.tensor([[7, 3]]))
    assert t.classes[0].tolist() == [3, 7, NEGATIVE]
    t_off = match_anchors(anchors, gt, torch.tensor([[7, 3]]), force_match=False)
    assert t_off.classes[0].tolist() == [3, NEGATIVE, NEGATIVE]


def test_anchor_claimed_by_two_boxes_goes_to_the_better_overlap():
    anchors = _t([[0, 0, 10, 10], [200, 200, 210, 210]])
    gt = _t([[[0, 0, 10, 30], [0, 0, 10, 12]]])  # both best at anchor 0; IoU 1/3 vs 10/12
    t = match_anchors(anchors, gt, torch.tensor([[1, 4]]))
    assert t.classes[0, 0] == 4 and t.matched[0, 0] == 1


def test_box_targets_decode_back_to_the_matched_boxes():
    from edgedet.anchors import decode_boxes

    anchors = generate_anchors(get_config("lite0"), SIZE)
    gt = _t([[[10, 20, 50, 45], [60, 60, 120, 110], [0, 0, 0, 0]], [[30, 5, 38, 14], [0, 0, 0, 0], [0, 0, 0, 0]]])
    labels = torch.tensor([[1, 4, -1], [2, -1, -1]])
    t = match_anchors(torch.from_numpy(anchors.copy()), gt, labels)
    b, a = t.positive_index
    assert set(t.matched[b, a].tolist()) == {0, 1} and t.num_positives >= 3
    decoded = decode_boxes(t.box_targets.numpy(), anchors[a.numpy()])
    np.testing.assert_allclose(decoded, gt[b, t.matched[b, a]].numpy(), atol=1e-3)
    assert t.classes[b, a].tolist() == labels[b, t.matched[b, a]].tolist()


def test_padding_and_empty_images_give_background():
    anchors = _t([[0, 0, 10, 10], [20, 20, 30, 30]])
    gt = _t([[[0, 0, 10, 10], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, -1], [-1, -1]])
    t = match_anchors(anchors, gt, labels)
    assert t.classes.tolist() == [[0, NEGATIVE], [NEGATIVE, NEGATIVE]]
    assert t.num_positives == 1
    empty = match_anchors(anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64))
    assert empty.num_positives == 0 and bool((empty.classes == NEGATIVE).all())


# ----------------------------------------------------------------------------------------- loss


def test_focal_loss_hand_computed():
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 1.0])
    p = 1 / (1 + math.exp(-2.0))
    q = 1 / (1 + math.exp(1.0))
    expected = [
        0.25 * 0.5 ** 1.5 * math.log(2.0),  # positive, p = 0.5
        0.75 * p ** 1.5 * -math.log(1 - p),  # negative with p = sigmoid(2)
        0.25 * (1 - q) ** 1.5 * -math.log(q),  # positive with p = sigmoid(-1)
    ]
    np.testing.assert_allclose(focal_loss(logits, targets).numpy(), expected, rtol=1e-6)


def test_detection_loss_normalization_and_weights():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 4.5], [50, 50, 60, 60]], np.float32)
    loss_fn = DetectionLoss(anchors)
    cls = torch.zeros(1, 3, 2)  # every probability 0.5
    box = torch.zeros(1, 3, 4)
    gt = _t([[[0, 0, 10, 10]]])
    total, parts = loss_fn(cls, box, gt, torch.tensor([[1]]))
    # Anchor 0 positive (class 1), anchor 1 ignored, anchor 2 negative; normalizer 1 + 1.
    pos = 0.25 * 0.5 ** 1.5 * math.log(2)
    neg = 0.75 * 0.5 ** 1.5 * math.log(2)
    cls_expected = (pos + neg + 2 * neg) / 2
    assert parts["num_positives"] == 1
    assert parts["cls_loss"] == pytest.approx(cls_expected, rel=1e-5)
    assert parts["box_loss"] == 0.0  # the box equals its anchor: zero targets, zero predictions
    box = torch.zeros(1, 3, 4)
    box[0, 0] = torch.tensor([0.05, 0.0, 0.0, 0.3])  # Huber(0.1): 0.5*0.05^2 and 0.1*(0.3-0.05)
    total, parts = loss_fn(cls, box, gt, torch.tensor([[1]]))
    box_expected = (0.5 * 0.05 ** 2 + 0.1 * (0.3 - 0.05)) / (4 * 2)
    assert parts["box_loss"] == pytest.approx(box_expected, rel=1e-5)
    assert float(total) == pytest.approx(cls_expected + 50 * box_expected, rel=1e-5)


# ----------------------------------------------------------------------------------------- data


def _write_coco(root: Path, frames: list[np.ndarray], boxes: list[list[list[float]]]) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (frame, bs) in enumerate(zip(frames, boxes)):
        cv2.imwrite(str(root / "img" / f"{i}.png"), frame)
        images.append({"id": 10 + i, "file_name": f"{i}.png", "width": frame.shape[1], "height": frame.shape[0]})
        for x1, y1, x2, y2 in bs:
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": 7,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": 7, "name": "square"}, {"id": 3, "name": "circle"}]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_index_maps_category_ids_to_contiguous_classes(tmp_path):
    frame = np.zeros((40, 60, 3), np.uint8)
    ann = _write_coco(tmp_path, [frame], [[[5, 5, 20, 30]]])
    index = load_coco_index(ann)
    assert index.category_ids == [3, 7] and index.class_names == ["circle", "square"]
    assert index.labels[0].tolist() == [1]
    np.testing.assert_array_equal(index.boxes[0], [[5, 5, 20, 30]])


def test_unaugmented_sample_is_exactly_the_runtime_preprocessing(tmp_path):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)
    ann = _write_coco(tmp_path, [frame], [[[15, 30, 75, 60]]])
    norm = get_config("lite0").normalization
    ds = CocoDetection(ann, tmp_path / "img", SIZE, norm, augment=None)
    sample = ds[0]
    expected, letterboxes = preprocess(frame, SIZE, norm.mean, norm.std, rgb=False)
    np.testing.assert_array_equal(sample["image"].numpy(), expected[0])
    s = letterboxes[0].scale
    np.testing.assert_allclose(sample["boxes"].numpy(), [[15 * s, 30 * s, 75 * s, 60 * s]], rtol=1e-6)
    assert sample["image_id"] == 10 and sample["labels"].tolist() == [1]


def test_augmented_boxes_follow_the_pixels(tmp_path):
    """A white rectangle on black: after flip/scale/crop/pad the box must frame the white pixels."""
    frames, boxes = [], []
    for i, (x1, y1, x2, y2) in enumerate([(20, 30, 70, 60), (100, 10, 150, 100), (5, 5, 40, 25)]):
        frame = np.zeros((120, 160, 3), np.uint8)
        frame[y1:y2, x1:x2] = 255
        frames.append(frame)
        boxes.append([[x1, y1, x2, y2]])
    ann = _write_coco(tmp_path, frames, boxes)
    norm = get_config("lite0").normalization
    ds = CocoDetection(ann, tmp_path / "img", SIZE, norm,
                       augment=Augment(scale_min=0.6, scale_max=1.6, min_visible=0.0), seed=1)
    checked = 0
    for epoch in range(6):
        for i in range(len(ds)):
            sample = ds[(epoch, i)]
            white = sample["image"].numpy()[0] > 0.9  # R channel, normalized: white ~ 1.0
            if not white.any():
                assert len(sample["boxes"]) == 0
                continue
            ys, xs = np.nonzero(white)
            assert len(sample["boxes"]) == 1
            x1, y1, x2, y2 = sample["boxes"][0].tolist()
            # Interpolation blurs the edges by up to a pixel or so.
            assert abs(x1 - xs.min()) <= 1.5 and abs(x2 - (xs.max() + 1)) <= 1.5
            assert abs(y1 - ys.min()) <= 1.5 and abs(y2 - (ys.max() + 1)) <= 1.5
            checked += 1
    assert checked >= 12
    # Same (seed, epoch, index): same sample; another epoch: another draw.
    assert torch.equal(ds[(2, 1)]["image"], ds[(2, 1)]["image"])
    assert not all(torch.equal(ds[(e, 1)]["boxes"], ds[(0, 1)]["boxes"]) for e in range(1, 6))


def test_augmentation_drops_tiny_and_mostly_cropped_boxes(tmp_path):
    frame = np.zeros((SIZE, SIZE, 3), np.uint8)
    ann = _write_coco(tmp_path, [frame], [[[10, 10, 11.5, 40], [0, 0, 100, 100]]])
    norm = get_config("lite0").normalization
    ds = CocoDetection(ann, tmp_path / "img", SIZE, norm, augment=Augment(flip_prob=0.0, scale_min=1.0,
                                                                          scale_max=1.0001))
    sample = ds[(0, 0)]
    assert len(sample["boxes"]) == 1  # the 1.5 px wide box is gone
    batch = collate([sample, ds[(1, 0)]])
    assert batch["images"].shape == (2, 3, SIZE, SIZE)
    assert batch["boxes"].shape == (2, 1, 4) and batch["labels"].tolist() == [[1], [1]]


# -------------------------------------------------------------------------------------- schedule


def test_lr_schedule_and_ema():
    assert lr_at(0, 100, 1.0, 10, 0.01) == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, 10, 0.01) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10, 0.01) == pytest.approx(0.505)
    assert lr_at(100, 100, 1.0, 10, 0.01) == pytest.approx(0.01)
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEma(model, 0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(0)  # warm-up decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.9))
    ema.update(1000)  # decay 0.9
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.9 + 0.1 * 0.1))


# ------------------------------------------------------------------------------------- training


def test_overfitting_one_batch_lowers_the_loss(shapes):
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = get_config("lite0")
        ds = CocoDetection(shapes["train_ann"], shapes["train_images"], SIZE, cfg.normalization, augment=None)
        batch = collate([ds[i] for i in range(4)])
        model = create_model("lite0", num_classes=ds.num_classes, image_size=SIZE, drop_path_rate=0.0).train()
        loss_fn = DetectionLoss(generate_anchors(model.config, SIZE))
        targets = loss_fn.targets(batch["boxes"], batch["labels"])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(15):
            cls, box = model(batch["images"])
            loss, _ = loss_fn(cls, box, batch["boxes"], batch["labels"], targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        torch.set_num_threads(previous)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert np.isfinite(losses).all()
    assert last < 0.8 * first, losses  # measured: 1.82 -> 1.16


@pytest.fixture(scope="module")
def short_run(shapes, tmp_path_factory):
    """Two steps (one worker process: the real data path), then resumed to four."""
    out = tmp_path_factory.mktemp("run")
    first = train("lite0", *_data(shapes), out=out, epochs=1, max_steps=2, **{**FAST, "num_workers": 1})
    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    second = train("lite0", *_data(shapes), out=out, epochs=1, max_steps=4, resume=True, **FAST)
    return out, first, saved, second


def test_training_writes_loadable_checkpoints_with_metadata(short_run):
    out, first, saved, second = short_run
    assert first.steps == 2 and first.stopped_by == "max_steps"
    assert (out / "best.pth").is_file() and (out / "last.pt").is_file()
    meta = load_metadata(out / "best.pth")
    assert meta["variant"] == "lite0" and meta["image_size"] == SIZE
    assert meta["num_classes"] == len(CLASSES) and meta["class_names"] == list(CLASSES)
    assert meta["category_ids"] == list(range(1, len(CLASSES) + 1))
    assert set(meta["val_metrics"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert meta["val_map"] == meta["val_metrics"]["AP"]
    assert meta["train_config"]["batch_size"] == 4 and meta["train_config"]["optimizer"] == "adamw"
    assert {"epoch", "step"} <= set(meta)


def test_checkpoint_reloads_into_a_fresh_model_with_identical_outputs(short_run, shapes):
    out, first, saved, second = short_run
    fresh = create_model("lite0", num_classes=len(CLASSES), image_size=SIZE)
    load_checkpoint(fresh, out / "last.pt")  # the EMA weights
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = second.model(x)
        got = fresh.eval()(x)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    rebuilt = load_trained(out / "best.pth")
    assert rebuilt.image_size == SIZE and rebuilt.config.num_classes == len(CLASSES)


def test_resume_continues_from_the_saved_step(short_run):
    out, first, saved, second = short_run
    assert saved["trainer"]["step"] == 2
    assert second.steps == 4 and second.images_seen == 16
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4]
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    # AdamW counted all four steps: its state came back from last.pt.
    steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {4}
    assert state["trainer"]["step"] == 4


def test_existing_run_is_not_overwritten_silently(short_run, shapes):
    out, *_ = short_run
    with pytest.raises(FileExistsError, match="resume"):
        train("lite0", *_data(shapes), out=out, max_steps=1, **FAST)


def test_cli_trains_and_reports(shapes, tmp_path, capsys):
    code = cli_main(["lite0", "--train-ann", str(shapes["train_ann"]), "--train-images",
                     str(shapes["train_images"]), "--out", str(tmp_path / "cli"), "--image-size", str(SIZE),
                     "--batch-size", "4", "--max-steps", "1", "--threads", "1", "--workers", "0",
                     "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 1 and summary["best"].endswith("best.pth")
    assert load_metadata(tmp_path / "cli" / "best.pth")["val_map"] is None  # no val split given
    assert cli_main(["lite0", "--out", str(tmp_path / "x")]) == 2  # no data


def test_time_limit_stops_and_saves(shapes, tmp_path):
    result = train("lite0", *_data(shapes), out=tmp_path, epochs=50, time_limit_minutes=0.05,
                   ema_decay=None, **FAST)
    assert result.stopped_by == "time_limit"
    assert 1 <= result.steps < 200
    assert (tmp_path / "best.pth").is_file() and (tmp_path / "last.pt").is_file()


def test_train_config_resolves_defaults(shapes):
    cfg = TrainConfig.create("lite0", *_data(shapes), optimizer="SGD", ema_decay=0,
                             num_threads=None, device="cpu")
    assert cfg.variant == "lite0" and cfg.image_size == get_config("lite0").image_size
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay) == ("sgd", 0.02, 4e-5)
    assert cfg.ema_decay is None and cfg.bn_momentum == 0.1 and cfg.num_threads >= 1
    assert cfg.augmentation == Augment()
    assert TrainConfig.create("lite0", *_data(shapes), init="lite0").bn_momentum is None
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig.create("lite0", *_data(shapes), image_size=100)
    with pytest.raises(ValueError, match="both val_ann and val_images"):
        TrainConfig.create("lite0", shapes["train_ann"], shapes["train_images"], shapes["val_ann"])


def test_trainer_steps_can_be_overridden(shapes, tmp_path):
    """The steps a data-parallel run keeps to rank 0 are methods a subclass replaces."""
    calls = []

    class Quiet(Trainer):
        def evaluate(self):
            calls.append(("evaluate", self.step))
            return None

        def save_last(self):
            calls.append(("save_last", self.step))

    cfg = TrainConfig.create("lite0", *_data(shapes), max_steps=2, batch_size=4, image_size=SIZE,
                             num_threads=1, num_workers=0)
    result = Quiet(cfg, tmp_path, progress=False).run()
    assert result.steps == 2 and result.stopped_by == "max_steps"
    assert calls == [("evaluate", 2), ("save_last", 2)]
    assert not (tmp_path / "last.pt").exists() and (tmp_path / "best.pth").is_file()
    assert [h["step"] for h in result.history] == [2]
