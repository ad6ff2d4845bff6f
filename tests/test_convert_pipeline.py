"""The pipeline's request handling: what a checkpoint from edgedet-train brings (class names,
training size), export options (int8 mode, per-format options) and their checks. Exports go
through the small PyTorch reference format, so these run in seconds."""
from __future__ import annotations

import pytest
import torch

from converters import convert
from converters.base import ConvertError
from converters.cli import main
from edgedet.manifest import Manifest
from edgedet.model import create_model
from edgedet.model.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A lite0 checkpoint as edgedet-train writes it: 3 classes, trained at 256 px."""
    torch.manual_seed(0)
    model = create_model("lite0", 3, image_size=256)
    path = tmp_path_factory.mktemp("trained") / "best.pth"
    save_checkpoint(model, path, metadata={"variant": "lite0", "image_size": 256, "num_classes": 3,
                                           "class_names": ["circle", "square", "triangle"]})
    return path


def test_training_size_and_class_names_are_used(trained, tmp_path):
    report = convert("lite0", formats="torch", precisions="fp32", weights=str(trained), out_dir=tmp_path)
    assert report.ok, report.table()
    manifest = Manifest.load(tmp_path / "lite0" / "torch-fp32-256")  # not lite0's native 320: named
    assert manifest.input.shape == (1, 3, 256, 256) and manifest.anchors.image_size == 256
    assert manifest.labels == ("circle", "square", "triangle") and manifest.num_classes == 3


def test_explicit_size_and_labels_win(trained, tmp_path):
    report = convert("lite0", formats="torch", precisions="fp32", weights=str(trained), out_dir=tmp_path,
                     image_size=320, labels=["a", "b", "c"])
    assert report.ok, report.table()
    manifest = Manifest.load(tmp_path / "lite0" / "torch-fp32")
    assert manifest.input.shape == (1, 3, 320, 320) and manifest.labels == ("a", "b", "c")
    # another size is another artifact, in its own directory: the rerun at 256 builds it
    again = convert("lite0", formats="torch", precisions="fp32", weights=str(trained), out_dir=tmp_path)
    assert [r.status for r in again.results] == ["built"] and again.results[0].path.name == "torch-fp32-256"
    native = convert("lite0", formats="torch", precisions="fp32", weights=str(trained), out_dir=tmp_path,
                     image_size="native")
    assert native.ok and Manifest.load(tmp_path / "lite0" / "torch-fp32").input.shape == (1, 3, 320, 320)


def test_checkpoint_of_another_variant_is_refused(trained, tmp_path):
    with pytest.raises(ConvertError, match="hold a lite0 model, not d0"):
        convert("d0", formats="torch", precisions="fp32", weights=str(trained), out_dir=tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=300), "multiple of 32"),
    (dict(int8_mode="half"), "unknown int8 mode 'half'"),
    (dict(exporter_options={"tflite": {"input_dtype": "uint8"}}), "not among --formats"),
    (dict(exporter_options={"torch": {"colour": "blue"}}), "bad options for format torch"),
])
def test_bad_requests_fail_before_any_work(trained, tmp_path, kwargs, message):
    with pytest.raises(ConvertError, match=message):
        convert("lite0", formats="torch", precisions="fp32", weights=str(trained), out_dir=tmp_path / "x",
                **kwargs)
    assert not (tmp_path / "x").exists()


def test_int8_mode_reaches_the_exporters():
    from converters.pipeline import _plan

    def options(mode):
        plan = _plan("lite0", "onnx,openvino,tflite", "int8", "random", "unused", calibration="synthetic",
                     calibration_count=8, allow_random=True, force=False, num_classes=None, labels=None,
                     seed=0, exporters=None, int8_mode=mode,
                     exporter_options={"tflite": {"input_kind": "tensor", "input_dtype": "uint8"}})
        return {j.exporter.name: (j.exporter.options("int8"), j.key) for j in plan.jobs}

    full, aware, default = options("full"), options("accuracy-aware"), options(None)
    for name in ("onnx", "openvino", "tflite"):
        assert full[name][0]["int8_mode"] == "full" and aware[name][0]["int8_mode"] == "accuracy-aware"
        assert full[name][1] != aware[name][1]  # the mode is part of the export key
        # Random weights are for latency: no accuracy search unless asked for.
        assert default[name] == full[name]
    assert full["tflite"][0]["input_dtype"] == "uint8"


def test_cli_accuracy_target_reaches_every_int8_format(capsys):
    """The --accuracy-* options make one AccuracyTarget for every format that makes INT8."""
    from converters.accuracy import AccuracyTarget
    from converters.cli import _exporter_options, build_parser
    from converters.pipeline import _plan

    parser = build_parser()
    args = parser.parse_args(["--variants", "lite0", "--formats", "onnx,openvino,tflite,torch",
                              "--accuracy-ap50", "0.97", "--accuracy-images", "2"])
    options = _exporter_options(parser, args)
    target = AccuracyTarget(detection_ap50=0.97, validation_images=2)
    assert options == {name: {"accuracy_target": target} for name in ("onnx", "openvino", "tflite")}
    plan = _plan("lite0", "onnx,openvino,tflite", "int8", "random", "unused", calibration="synthetic",
                 calibration_count=8, allow_random=True, force=False, num_classes=None, labels=None, seed=0,
                 exporters=None, int8_mode="accuracy-aware", exporter_options=options)
    assert {j.exporter.options("int8")["accuracy_target"] for j in plan.jobs} == {target.describe()}
    with pytest.raises(SystemExit):
        main(["--variants", "lite0", "--int8-mode", "full", "--accuracy-ap50", "0.9"])
    assert "do not go with --int8-mode full" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--variants", "lite0", "--accuracy-cls-cosine", "1.5"])
    assert "cls_cosine must be in (0, 1)" in capsys.readouterr().err


def test_cli_options(trained, tmp_path, capsys):
    assert main(["--variants", "lite0", "--formats", "torch", "--precisions", "fp32", "--weights", str(trained),
                 "--image-size", "192", "--out", str(tmp_path), "-q"]) == 0
    assert Manifest.load(tmp_path / "lite0" / "torch-fp32-192").input.shape == (1, 3, 192, 192)
    with pytest.raises(SystemExit):
        main(["--variants", "lite0", "--formats", "onnx", "--tflite-input-dtype", "uint8"])
    assert "needs tflite in --formats" in capsys.readouterr().err


def test_detection_agreement():
    """The detection figures: identical outputs agree fully; a detection moved off its box or
    pushed below the threshold counts against the artifact; nothing found on both sides agrees."""
    import numpy as np

    from converters.verify import detection_agreement
    from edgedet.anchors import generate_anchors
    from edgedet.config import get_config

    anchors = generate_anchors(get_config("lite0").with_(image_size=128))
    n = len(anchors)
    cls = np.full((1, n, 3), -8.0, np.float32)
    box = np.zeros((1, n, 4), np.float32)
    cls[0, [100, 900, 1500], [0, 1, 2]] = 3.0  # three confident detections (separate anchors)
    same = detection_agreement([cls], [box], [cls.copy()], [box.copy()], anchors)
    assert same == {"detection_ap50": 1.0, "detection_precision": 1.0, "detection_recall": 1.0,
                    "detection_f1": 1.0}
    moved, weaker = box.copy(), cls.copy()
    moved[0, 100] = [3.0, 3.0, 0.0, 0.0]  # shifted by 3 anchor sizes: IoU 0 with the reference box
    weaker[0, 1500, 2] = -1.5  # score 0.18: below the 0.3 threshold, still ranked for the AP
    figures = detection_agreement([cls], [box], [cls], [moved], anchors)
    assert figures["detection_recall"] == pytest.approx(2 / 3) and figures["detection_ap50"] < 1
    figures = detection_agreement([cls], [box], [weaker], [box], anchors)
    assert figures["detection_recall"] == pytest.approx(2 / 3) and figures["detection_ap50"] == 1.0
    empty = np.full_like(cls, -8.0)
    assert detection_agreement([empty], [box], [empty], [box], anchors)["detection_f1"] == 1.0


def test_published_coco_checkpoints_get_coco_names(tmp_path, monkeypatch):
    """A published 90-class checkpoint (here a local file standing in for the cached download)
    resolves with COCO's names: output k is category id k + 1; a local path keeps class_N."""
    from converters.weights import resolve_weights
    from edgedet.data.coco import COCO90_LABELS
    from edgedet.model import checkpoint as ckpt

    path = tmp_path / "tf_efficientdet_lite0.pth"
    save_checkpoint(create_model("lite0", 90), path)
    monkeypatch.setattr(ckpt, "checkpoint_path", lambda source, **kwargs: path)
    published = resolve_weights("published", "lite0", allow_random=False)
    assert published.class_names == COCO90_LABELS and len(COCO90_LABELS) == 90
    assert (COCO90_LABELS[0], COCO90_LABELS[2], COCO90_LABELS[89]) == ("person", "car", "toothbrush")
    assert COCO90_LABELS[11] == "unused_12"  # id 12 has no category in COCO 2017
    assert resolve_weights(str(path), "lite0", allow_random=False).class_names is None


def test_exporters_refuse_what_they_cannot_make():
    """Direct calls of an exporter get the same checks as the pipeline's requests."""
    from converters import OnnxExporter, TorchExporter

    with pytest.raises(ConvertError, match="torch exports fp32, not 'int8'"):
        TorchExporter().check_request("int8", None)
    with pytest.raises(ConvertError, match="int8 needs calibration data"):
        OnnxExporter().check_request("int8", None)
    OnnxExporter().check_request("fp16", None)  # no calibration needed


def test_realistic_random_weights_pass_a_trained_like_number_of_scores():
    """Random weights give about as many scores above the runtime's threshold as a trained detector
    (so the benchmark's decode + NMS time is what a deployment pays), on scenes they were not
    fitted on; the focal-loss prior alone let 50k+ per image through."""
    from converters.calibration import synthetic_frame
    from converters.weights import CANDIDATES_PER_IMAGE, build_model, resolve_weights
    from edgedet.postprocess import DEFAULT_SCORE_THRESHOLD, score_to_logit
    from edgedet.preprocess import preprocess

    model = build_model("lite0", 90, resolve_weights("random", "lite0", allow_random=True))
    norm = model.config.normalization
    batch, _ = preprocess([synthetic_frame(3, i) for i in range(4)], 320, norm.mean, norm.std)
    with torch.inference_mode():
        cls, _ = model(torch.from_numpy(batch))
    per_image = (cls > score_to_logit(DEFAULT_SCORE_THRESHOLD)).sum(dim=(1, 2))
    assert ((per_image > CANDIDATES_PER_IMAGE / 5) & (per_image < CANDIDATES_PER_IMAGE * 5)).all(), per_image

