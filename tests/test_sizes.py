"""Resolution as a second knob (issue 13): artifacts at several input sizes, their measured mAP in
the manifest, the expected-accuracy rule, and the Detector choosing among (variant, size,
precision) by it.

The artifacts are real (lite0 at 256 and 320 px, lite1 at 256 px; ONNX; random weights) and
so are the runtimes; latencies are made deterministic by a device profile written into the
profile cache under the real keys (no timing asserts).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from converters import convert
from converters.base import ConvertError
from converters.cli import build_parser, main
from edgedet.config import (AP_SLOPE_ABOVE, AP_SLOPE_BELOW, SIZE_MULTIPLE, check_image_size, expected_coco_ap,
                            get_config)
from edgedet.detector import BudgetError, Detector, accuracy_rank, accuracy_ranks, find_artifacts
from edgedet.manifest import AccuracyInfo, Manifest, ManifestError, artifact_dir
from edgedet.profiling import architecture_fingerprint
from conftest import EXPORT_OPTIONS
from test_detector import FRAME_SIZE, fake_profile

SMALL = 256  # lite0's native size is 320


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    """4 synthetic images in COCO format (categories within 1..90: a 90-class model maps to them)."""
    from edgedet.data.synthetic import SyntheticConfig, generate_coco

    root = tmp_path_factory.mktemp("eval-set")
    ann = generate_coco(root, num_images=4, config=SyntheticConfig(image_size=(320, 240), seed=5),
                        split_name="val", progress=False)
    return ann, root / "val"


@pytest.fixture(scope="module")
def sized(tmp_path_factory, eval_set):
    """lite0 at 256 and native 320 (fp32 then int8, scored on the eval set), lite1 at 256 (fp32):
    (directory, the three reports). Fresh on purpose: the tests check what was built and skipped."""
    out = tmp_path_factory.mktemp("sized")
    ann, images = eval_set
    first = convert("lite0", formats="onnx", precisions="fp32", out_dir=out, image_sizes=f"{SMALL},native",
                    **EXPORT_OPTIONS)
    assert first.ok, first.table()
    second = convert("lite0", formats="onnx", precisions="fp32,int8", out_dir=out, image_sizes=[SMALL, "native"],
                     eval_ann=ann, eval_images=images, **EXPORT_OPTIONS)
    assert second.ok, second.table()
    lite1 = convert("lite1", formats="onnx", precisions="fp32", out_dir=out, image_sizes=str(SMALL), **EXPORT_OPTIONS)
    assert lite1.ok, lite1.table()
    return out, (first, second, lite1)


# ------------------------------------------------------------------------------------ converting


def test_each_size_is_its_own_artifact_named_when_not_native(sized):
    out, (first, second, _) = sized
    assert sorted(p.name for p in (out / "lite0").iterdir()) == [
        "onnxruntime-fp32", f"onnxruntime-fp32-{SMALL}", "onnxruntime-int8", f"onnxruntime-int8-{SMALL}"]
    assert [(r.name, r.status) for r in first.results] == [
        (f"lite0/onnxruntime-fp32-{SMALL}", "built"), ("lite0/onnxruntime-fp32", "built")]
    config = get_config("lite0")
    for size in (SMALL, config.image_size):
        for precision in ("fp32", "int8"):
            directory = artifact_dir(out, "lite0", "onnxruntime", precision, size)
            m = Manifest.load(directory)
            # the shapes, the anchors and the name all follow the size
            assert m.input.image_size == size and m.anchors.image_size == size == m.image_size
            assert m.input.shape == ((1, size, size, 3) if m.input.layout == "NHWC" else (1, 3, size, size))
            assert m.output("cls_logits").shape == (1, config.num_anchors(size), 90)
            assert m.artifact_name == f"lite0/{directory.name}"
            assert m.parity["passed"] is True  # verified against PyTorch at that size
            assert second.get("lite0", "onnx", precision, size).path == directory
    small, native = (Manifest.load(artifact_dir(out, "lite0", "onnxruntime", "fp32", s)) for s in (SMALL, 320))
    assert small.export_key != native.export_key
    # The profile cache keys a measurement by the architecture, which the size is part of.
    assert architecture_fingerprint(small) != architecture_fingerprint(native)


def test_served_at_its_size_equals_pytorch_at_that_size(sized):
    """The whole path at 256: the Pipeline letterboxes to 256 and decodes with 256-px anchors."""
    import torch

    from converters.weights import build_model, resolve_weights
    from edgedet.anchors import generate_anchors
    from edgedet.data.synthetic import SyntheticConfig, render
    from edgedet.postprocess import postprocess
    from edgedet.preprocess import preprocess

    out, _ = sized
    small = out / "lite0" / f"onnxruntime-fp32-{SMALL}"
    det = Detector(variant="lite0", models=small, profile_cache=False, score_threshold=0.2)
    assert det.artifact.manifest.image_size == SMALL
    image, _ = render(3, SyntheticConfig(image_size=(480, 360), seed=3))
    found = det(image)
    model = build_model("lite0", 90, resolve_weights("random", "lite0", allow_random=True), image_size=SMALL)
    config = model.config
    batch, (letterbox,) = preprocess(image, SMALL, config.normalization.mean, config.normalization.std)
    with torch.no_grad():
        cls, box = (t.numpy()[0] for t in model(torch.from_numpy(batch)))
    boxes, scores, classes = postprocess(cls, box, generate_anchors(config), score_threshold=0.2)
    letterbox.to_frame(boxes)
    assert len(found) == len(scores) > 0
    np.testing.assert_allclose(found.xyxy, boxes, atol=0.05)
    np.testing.assert_array_equal(found.class_id, classes)


def test_measured_map_is_recorded_and_not_measured_twice(sized, eval_set):
    """The second run scored the fp32 artifacts in place (up to date, not rebuilt) and the new int8
    ones as built; the figures are evaluate_artifact's; a rerun scores nothing again."""
    from edgedet.evaluate import evaluate_artifact
    from edgedet.hub import sha256_file

    out, (_, second, _) = sized
    ann, images = eval_set
    statuses = {r.name: r.status for r in second.results}
    assert statuses == {f"lite0/onnxruntime-fp32-{SMALL}": "skipped", "lite0/onnxruntime-fp32": "skipped",
                        f"lite0/onnxruntime-int8-{SMALL}": "built", "lite0/onnxruntime-int8": "built"}
    assert "mAP" in second.table()
    for result in second.results:
        m = Manifest.load(result.path)
        assert m.accuracy == result.accuracy and m.accuracy.images == 4
        assert m.accuracy.dataset == f"{ann.name}#{sha256_file(ann)[:12]}"
        metrics = evaluate_artifact(result.path, ann, images)
        assert m.accuracy.map50_95 == pytest.approx(max(0.0, metrics["AP"]), abs=1e-9)
        assert m.accuracy.map50 == pytest.approx(max(0.0, metrics["AP50"]), abs=1e-9)
        assert m.files_match(result.path)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("lite0/*/manifest.json")}
    again = convert("lite0", formats="onnx", precisions="fp32,int8", out_dir=out, image_sizes=f"{SMALL},native",
                    eval_ann=ann, eval_images=images, **EXPORT_OPTIONS)
    assert {r.status for r in again.results} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_sizes="256,300"), r"image size 300 is not a positive multiple of 32 .*288 and 320"),
    (dict(image_sizes=[0]), "positive multiple of 32"),
    (dict(image_sizes="256,big"), "number of pixels or 'native'"),
    (dict(image_sizes=""), "no image sizes"),
    (dict(image_size=256, image_sizes="320"), "not both"),
    (dict(eval_ann="val.json"), "give both --eval-ann FILE and --eval-images DIR"),
    (dict(eval_limit=3), "needs an evaluation set"),
])
def test_bad_sizes_and_evaluation_fail_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(ConvertError, match=message):
        convert("lite0", formats="onnx", precisions="fp32", out_dir=tmp_path / "x", weights="random",
                allow_random=True, **kwargs)
    assert not (tmp_path / "x").exists()


def test_missing_evaluation_file_is_named(tmp_path, eval_set):
    _, images = eval_set
    with pytest.raises(ConvertError, match="--eval-ann: cannot read the COCO annotation file"):
        convert("lite0", formats="onnx", precisions="fp32", out_dir=tmp_path / "x", weights="random",
                allow_random=True, eval_ann=tmp_path / "missing.json", eval_images=images)


def test_cli_sizes_and_evaluation_options(capsys):
    text = build_parser().format_help()
    for option in ("--image-sizes", "--eval-ann", "--eval-images", "--eval-limit"):
        assert option in text
    with pytest.raises(SystemExit):
        main(["--variants", "lite0", "--image-size", "320", "--image-sizes", "256,320"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["--variants", "lite0", "--weights", "random", "--allow-random", "--precisions", "fp32",
                 "--image-sizes", "250", "--out", "unused-never-created"]) == 2
    assert "multiple of 32" in capsys.readouterr().err and not Path("unused-never-created").exists()


# ------------------------------------------------------------------------------------ the rule


def test_size_rule():
    d0 = get_config("d0")
    assert SIZE_MULTIPLE == 32 and check_image_size(384) == 384
    with pytest.raises(ValueError, match="nearest that work are 480 and 512"):
        check_image_size(500)
    assert expected_coco_ap("d0") == expected_coco_ap("d0", 512) == d0.coco_ap
    assert expected_coco_ap("d0", 384) == pytest.approx(d0.coco_ap * (1 + AP_SLOPE_BELOW * math.log(384 / 512)))
    assert expected_coco_ap("d0", 640) == pytest.approx(d0.coco_ap * (1 + AP_SLOPE_ABOVE * math.log(640 / 512)))
    sizes = [128, 256, 384, 512, 640, 768]
    assert [expected_coco_ap("d0", s) for s in sizes] == sorted(expected_coco_ap("d0", s) for s in sizes)
    # more pixels help less than fewer pixels hurt
    assert expected_coco_ap("d0", 640) - d0.coco_ap < d0.coco_ap - expected_coco_ap("d0", 410)
    # d1 at 384 px (fewer FLOPs than d0 at 512) is expected to be the more accurate of the two
    assert expected_coco_ap("d1", 384) > expected_coco_ap("d0", 512)


def test_ranks_use_measured_map_only_when_all_share_one_evaluation_set(sized):
    out, _ = sized
    manifests = {a.name: a.manifest for a in find_artifacts(out / "lite0")}  # all scored on one set
    small, native = manifests[f"lite0/onnxruntime-fp32-{SMALL}"], manifests["lite0/onnxruntime-fp32"]
    better_small = replace(small, accuracy=replace(small.accuracy, map50_95=0.5))
    worse_native = replace(native, accuracy=replace(native.accuracy, map50_95=0.4))
    ranks = accuracy_ranks([better_small, worse_native])
    assert ranks[0] > ranks[1] and ranks[0][0] == pytest.approx(50.0)  # measured: the 256 one wins
    # one of them unscored (or scored on another set): both by the published rule
    for other in (replace(native, accuracy=None), replace(worse_native, accuracy=replace(native.accuracy, images=3))):
        ranks = accuracy_ranks([better_small, other])
        assert ranks[1] > ranks[0] and ranks[0][0] == pytest.approx(expected_coco_ap("lite0", SMALL))
    assert accuracy_rank(better_small) == accuracy_ranks([replace(better_small, accuracy=None)])[0]


def test_accuracy_field_is_optional_and_checked(sized):
    out, _ = sized
    m = Manifest.load(out / "lite0" / "onnxruntime-int8")
    plain = replace(m, accuracy=None)
    assert "accuracy" not in plain.to_dict() and Manifest.from_dict(plain.to_dict()) == plain
    assert Manifest.from_dict(json.loads(m.to_json())) == m
    data = m.to_dict()
    data["accuracy"]["map50_95"] = 34.3  # a percentage where 0..1 is meant
    with pytest.raises(ManifestError, match=r"accuracy.map50_95.*0..1"):
        Manifest.from_dict(data)
    data["accuracy"] = {"map50_95": 0.3, "map50": 0.5, "dataset": "val.json#0"}
    with pytest.raises(ManifestError, match="'accuracy.images' is missing"):
        Manifest.from_dict(data)
    assert isinstance(m.accuracy, AccuracyInfo)


# ------------------------------------------------------------------------------------ choosing


@pytest.fixture(scope="module")
def models(sized, tmp_path_factory):
    """lite0 at 256 and 320 (fp32, int8) and lite1 at 256 (fp32), ranked by the published rule
    (the lite1 artifact was not scored, so the set is not all on one evaluation set)."""
    out, _ = sized
    root = tmp_path_factory.mktemp("sized-models")
    shutil.copytree(out / "lite0", root / "lite0")
    shutil.copytree(out / "lite1", root / "lite1")
    return root


LATENCIES = {f"lite0/onnxruntime-int8-{SMALL}": 4.0, f"lite0/onnxruntime-fp32-{SMALL}": 5.0,
             "lite0/onnxruntime-int8": 12.0, "lite0/onnxruntime-fp32": 14.0, f"lite1/onnxruntime-fp32-{SMALL}": 8.0}


def start(models, tmp_path, budget, latencies=LATENCIES, **kw):
    cache = tmp_path / "profiles.json"
    fake_profile(cache, models, latencies)
    return Detector(budget, models=models, profile_cache=cache, frame_size=FRAME_SIZE, **kw)


@pytest.mark.parametrize("budget, expected", [
    (100.0, f"lite1/onnxruntime-fp32-{SMALL}"),  # all fit: lite1@256 (28.1 expected AP) beats lite0@320 (26.4)
    (10.0, f"lite1/onnxruntime-fp32-{SMALL}"),  # lite0@320 misses, yet the bigger phi at 256 fits
    (6.0, f"lite0/onnxruntime-fp32-{SMALL}"),  # the smaller size, at fp32
    (4.5, f"lite0/onnxruntime-int8-{SMALL}"),  # only int8 at 256 fits
])
def test_detector_chooses_among_variants_sizes_and_precisions(models, tmp_path, budget, expected):
    det = start(models, tmp_path, budget, adapt=False)
    assert det.artifact.name == expected and det.latency_ms == LATENCIES[expected]


def test_larger_size_when_the_budget_allows_smaller_when_not(models, tmp_path):
    lite0 = tmp_path / "lite0-only"
    shutil.copytree(models / "lite0", lite0 / "lite0")
    assert start(lite0, tmp_path, 1000.0, adapt=False).artifact.name == "lite0/onnxruntime-fp32"
    assert start(lite0, tmp_path, 6.0, adapt=False).artifact.name == f"lite0/onnxruntime-fp32-{SMALL}"


def test_walk_skips_what_cannot_fit_or_win(models, tmp_path):
    det = start(models, tmp_path, 10.0, adapt=False)
    rows = {row.artifact: row for row in det.profile}
    assert rows["lite0/onnxruntime-int8"].fits is False  # 12 ms: lite0@320 misses...
    assert rows[f"lite1/onnxruntime-fp32-{SMALL}"].fits is True  # ...but the bigger phi at 256 fits
    assert rows[f"lite0/onnxruntime-fp32-{SMALL}"].source == f"skipped (cannot win: lite1@{SMALL} fits)"
    assert rows[f"lite0/onnxruntime-fp32-{SMALL}"].latency_ms is None
    with pytest.raises(BudgetError) as error:
        start(models, tmp_path, 3.0, adapt=False)
    table = {line.split()[0]: line for line in str(error.value).splitlines() if line.startswith("lite")}
    # lite0's int8 and fp32 at 256 miss: every artifact with a phi and a size no smaller is not timed
    assert f"walk stopped: lite0/onnxruntime-int8-{SMALL} missed" in table["lite0/onnxruntime-int8"]
    assert f"walk stopped: lite0/onnxruntime-fp32-{SMALL} missed" in table["lite0/onnxruntime-fp32"]
    assert f"walk stopped: lite0/onnxruntime-fp32-{SMALL} missed" in table[f"lite1/onnxruntime-fp32-{SMALL}"]
    assert "--image-sizes" in str(error.value)


def test_measured_map_decides_when_every_artifact_has_one(sized, tmp_path):
    """Scored on one set, the 256-px artifacts measure better here: the Detector serves one of them
    even though the native one fits, and the adaptive ladder is ordered the same way."""
    out, _ = sized
    root = tmp_path / "models"
    shutil.copytree(out / "lite0", root / "lite0")
    measured = {f"onnxruntime-fp32-{SMALL}": 0.42, f"onnxruntime-int8-{SMALL}": 0.41, "onnxruntime-fp32": 0.40,
                "onnxruntime-int8": 0.39}
    for directory, value in measured.items():
        m = Manifest.load(root / "lite0" / directory)
        replace(m, accuracy=replace(m.accuracy, map50_95=value)).save(root / "lite0" / directory)
    det = start(root, tmp_path, 1000.0)
    try:
        assert det.artifact.name == f"lite0/onnxruntime-fp32-{SMALL}"
        # the native ones rank below an artifact that fits: never timed; the ladder is ranked the same way
        assert {row.artifact: row.source for row in det.profile}["lite0/onnxruntime-fp32"] == (
            f"skipped (cannot win: lite0@{SMALL} fits)")
        assert [r.name for r in det._policy.ladder] == [f"lite0/onnxruntime-int8-{SMALL}",
                                                         f"lite0/onnxruntime-fp32-{SMALL}"]
    finally:
        det.close()
