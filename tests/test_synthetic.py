"""edgedet.data.synthetic: determinism, annotations vs pixels, COCO output, caching, atomicity."""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.data import synthetic
from edgedet.data.synthetic import (
    CLASSES,
    VAL_INDEX_OFFSET,
    SyntheticConfig,
    categories,
    generate_coco,
    generate_splits,
    iter_images,
    render,
)

CFG = SyntheticConfig(image_size=256, seed=7)


@pytest.fixture(scope="module")
def many():
    """300 renders at 320 px: (image, annotations, masks) triples."""
    cfg = SyntheticConfig(image_size=320)
    return cfg, [render(i, cfg, return_masks=True) for i in range(300)]


# --- determinism -----------------------------------------------------------------------------------

def test_same_seed_and_index_give_identical_output_regardless_of_history():
    img_a, ann_a = render(5, CFG)
    for i in range(3):  # other renders in between must not matter
        render(i, CFG)
    img_b, ann_b = render(5, CFG)
    assert img_a.tobytes() == img_b.tobytes()
    assert ann_a == ann_b
    assert img_a.dtype == np.uint8 and img_a.shape == (256, 256, 3)


def test_different_index_or_seed_gives_different_images():
    a = render(0, CFG)[0]
    assert a.tobytes() != render(1, CFG)[0].tobytes()
    assert a.tobytes() != render(0, CFG.replace(seed=8))[0].tobytes()


def test_iter_images_matches_render():
    imgs = list(iter_images(CFG, count=3, start=10))
    assert len(imgs) == 3
    for k, img in enumerate(imgs):
        assert np.array_equal(img, render(10 + k, CFG)[0])


# --- annotations vs pixels --------------------------------------------------------------------------

def test_boxes_are_tight_boxes_of_visible_masks_and_inside_the_image(many):
    cfg, renders = many
    contrasty = total = 0
    for img, anns, masks in renders:
        h, w = img.shape[:2]
        assert len(anns) == len(masks)
        union = np.zeros((h, w), np.int32)
        for ann, mask in zip(anns, masks):
            assert set(ann) == {"bbox", "category_id", "area", "iscrowd"}
            assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(cfg.classes)
            x, y, bw, bh = map(int, ann["bbox"])
            assert bw >= 1 and bh >= 1 and x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1] == [x, y, bw, bh]
            assert ann["area"] == mask.sum()
            union += mask
            # The object's pixels stand out from what surrounds them.
            x0, y0, x1, y1 = max(x - 3, 0), max(y - 3, 0), min(x + bw + 3, w), min(y + bh + 3, h)
            m, crop = mask[y0:y1, x0:x1], img[y0:y1, x0:x1]
            ring = cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~m
            if ring.any():
                total += 1
                diff = np.abs(crop[m].mean(0).astype(float) - crop[ring].mean(0)).max()
                contrasty += diff > 12
        assert union.max() <= 1  # visible masks never overlap
    assert contrasty >= 0.98 * total


def test_sizes_classes_and_crowding_cover_the_range(many):
    cfg, renders = many
    sides = np.array([max(a["bbox"][2], a["bbox"][3]) for _, anns, _ in renders for a in anns])
    assert (sides < 16).sum() > 50
    assert sides.max() > 0.45 * 320
    cats = {a["category_id"] for _, anns, _ in renders for a in anns}
    assert cats == set(range(1, len(CLASSES) + 1))
    counts = [len(anns) for _, anns, _ in renders]
    assert min(counts) <= 2 and max(counts) >= 15


def test_non_square_size_and_class_subset():
    cfg = SyntheticConfig(image_size=(200, 120), classes=("star", "ring"), min_objects=3, max_objects=6)
    assert cfg.image_size == (200, 120)
    for i in range(10):
        img, anns = render(i, cfg)
        assert img.shape == (120, 200, 3)
        for a in anns:
            x, y, w, h = a["bbox"]
            assert a["category_id"] in (1, 2) and x + w <= 200 and y + h <= 120
    assert [c["name"] for c in categories(cfg)] == ["star", "ring"]


@pytest.mark.parametrize("bad", [dict(image_size=8), dict(classes=("blob",)), dict(min_objects=0),
                                 dict(min_objects=5, max_objects=2), dict(seed=-1), dict(max_aspect=0.5)])
def test_bad_configs_raise(bad):
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)


def test_presets_render():
    for name in ("easy", "default", "hard"):
        img, _ = render(0, SyntheticConfig.preset(name, image_size=64))
        assert img.shape == (64, 64, 3)
    with pytest.raises(ValueError):
        SyntheticConfig.preset("impossible")


# --- COCO output -----------------------------------------------------------------------------------

def _load(path: Path):
    from faster_coco_eval import COCO as FCOCO
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path)), FCOCO(str(path))


def test_generate_coco_writes_standard_coco(tmp_path):
    path = generate_coco(tmp_path, num_images=6, config=CFG, split_name="train", progress=False)
    assert path == tmp_path / "annotations" / "train.json"
    coco, fcoco = _load(path)
    assert len(coco.getImgIds()) == len(fcoco.getImgIds()) == 6
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    data = json.loads(path.read_text())
    ids = [a["id"] for a in data["annotations"]]
    assert len(ids) == len(set(ids)) > 0
    for im in data["images"]:
        file = tmp_path / "train" / im["file_name"]
        pixels = cv2.imread(str(file))
        assert pixels.shape == (im["height"], im["width"], 3) == (256, 256, 3)
        expected_img, expected = render(im["synthetic_index"], CFG)
        got = [{k: a[k] for k in ("bbox", "category_id", "area", "iscrowd")}
               for a in data["annotations"] if a["image_id"] == im["id"]]
        assert got == expected
        assert cv2.PSNR(pixels, expected_img) > 30  # JPEG quality 95
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_ground_truth_as_detections_scores_ap_1(tmp_path):
    from faster_coco_eval import COCOeval_faster
    from pycocotools.cocoeval import COCOeval

    path = generate_coco(tmp_path, num_images=8, config=CFG, progress=False)
    coco, fcoco = _load(path)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in json.loads(path.read_text())["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
        fev = COCOeval_faster(fcoco, fcoco.loadRes(dets), "bbox")
        fev.evaluate(), fev.accumulate(), fev.summarize()
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)
    assert fev.stats[0] == pytest.approx(1.0)


def test_rerun_is_skipped_and_a_changed_count_regenerates(tmp_path):
    path = generate_coco(tmp_path, num_images=4, config=CFG, progress=False)
    image = tmp_path / "train" / "000000.jpg"
    stamps = path.stat().st_mtime_ns, image.stat().st_mtime_ns
    assert generate_coco(tmp_path, num_images=4, config=CFG, progress=False) == path
    assert (path.stat().st_mtime_ns, image.stat().st_mtime_ns) == stamps

    generate_coco(tmp_path, num_images=3, config=CFG, progress=False)
    assert len(json.loads(path.read_text())["images"]) == 3
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    meta = json.loads((tmp_path / "annotations" / "train.meta.json").read_text())
    assert meta["num_images"] == 3 and meta["config"]["seed"] == 7

    # A changed config regenerates too; a deleted image is noticed.
    generate_coco(tmp_path, num_images=3, config=CFG.replace(seed=8), progress=False)
    assert json.loads(path.read_text())["info"]["seed"] == 8
    (tmp_path / "train" / "000001.jpg").unlink()
    generate_coco(tmp_path, num_images=3, config=CFG.replace(seed=8), progress=False)
    assert (tmp_path / "train" / "000001.jpg").is_file()


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    ann = tmp_path / "annotations" / "train.json"
    meta = tmp_path / "annotations" / "train.meta.json"
    generate_coco(tmp_path, num_images=3, config=CFG, progress=False)  # a complete older split

    def stop(position):
        if position == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_coco(tmp_path, num_images=6, config=CFG, progress=False, on_image=stop)
    assert not ann.exists() and not meta.exists()

    real_render = synthetic.render

    def flaky(index, config=None, **kw):
        if index == 4:
            raise RuntimeError("renderer crashed")
        return real_render(index, config, **kw)

    monkeypatch.setattr(synthetic, "render", flaky)
    with pytest.raises(RuntimeError, match="crashed"):
        generate_coco(tmp_path, num_images=6, config=CFG, progress=False)
    assert not ann.exists() and not meta.exists()
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    monkeypatch.setattr(synthetic, "render", real_render)
    path = generate_coco(tmp_path, num_images=6, config=CFG, progress=False)
    assert len(json.loads(path.read_text())["images"]) == 6 and meta.exists()


@pytest.mark.timeout(120)
def test_workers_give_the_same_output_as_one_process(tmp_path):
    one = generate_coco(tmp_path / "a", num_images=6, config=CFG, progress=False)
    two = generate_coco(tmp_path / "b", num_images=6, config=CFG, progress=False, workers=2)
    assert json.loads(one.read_text()) == json.loads(two.read_text())
    for name in os.listdir(tmp_path / "a" / "train"):
        assert (tmp_path / "a" / "train" / name).read_bytes() == (tmp_path / "b" / "train" / name).read_bytes()


def test_generate_splits_uses_disjoint_indices(tmp_path):
    paths = generate_splits(tmp_path, train=3, val=2, config=CFG, progress=False)
    train = json.loads(paths["train"].read_text())
    val = json.loads(paths["val"].read_text())
    assert [im["synthetic_index"] for im in train["images"]] == [0, 1, 2]
    assert [im["synthetic_index"] for im in val["images"]] == [VAL_INDEX_OFFSET, VAL_INDEX_OFFSET + 1]
    assert (tmp_path / "val" / "000001.jpg").is_file()
    assert (tmp_path / "train" / "000000.jpg").read_bytes() != (tmp_path / "val" / "000000.jpg").read_bytes()
