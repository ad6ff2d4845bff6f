"""edgedet.manifest: the artifact manifest schema — round trip, validation, file integrity."""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedet.anchors import generate_anchors
from edgedet.config import get_config
from edgedet.hub import sha256_file
from edgedet.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    AnchorSpec,
    CalibrationInfo,
    InputSpec,
    Manifest,
    ManifestError,
    NormalizationSpec,
    OutputSpec,
    Quantization,
    WeightsInfo,
    artifact_dir,
    export_key,
    utc_now,
)


def make_manifest(directory: Path, variant: str = "lite0", *, precision: str = "fp32",
                  payload: bytes = b"not really onnx, but bytes with a hash" * 100) -> Manifest:
    """A valid manifest for a fake one-file ONNX artifact written into ``directory``."""
    config = get_config(variant)
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / "model.onnx"
    model.write_bytes(payload)
    size, n = config.image_size, config.num_anchors()
    return Manifest(
        variant=variant, family=config.family, phi=config.phi, num_classes=3,
        labels=("person", "car", "dog"),
        input=InputSpec(name="images", shape=(1, 3, size, size), layout="NCHW", dtype="float32",
                        normalization=NormalizationSpec.from_config(config.normalization)),
        outputs=(OutputSpec("cls_logits", "cls_logits", (1, n, 3), "float32"),
                 OutputSpec("box_regression", "box_regression", (1, n, 4), "float32")),
        anchors=AnchorSpec.from_config(config), backend="onnxruntime", precision=precision,
        files={"model.onnx": sha256_file(model)},
        weights=WeightsInfo(source="random:seed=0", sha256=None, random=True),
        calibration=CalibrationInfo("synthetic:0", 8) if precision == "int8" else None,
        float_layers=("node_Sigmoid_1",) if precision == "int8" else (),
        parity={"cls_max_abs": 1e-5, "cls_cosine": 1.0, "passed": True},
        tools={"onnx": "1.23.2"}, created=utc_now(), export_key=export_key(variant=variant),
    )


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[Path, Manifest]:
    directory = artifact_dir(tmp_path, "lite0", "onnxruntime", "fp32")
    manifest = make_manifest(directory)
    manifest.save(directory)
    return directory, manifest


def saved_dict(directory: Path) -> dict:
    return json.loads((directory / MANIFEST_NAME).read_text())


def write_dict(directory: Path, data: dict) -> None:
    (directory / MANIFEST_NAME).write_text(json.dumps(data))


# ------------------------------------------------------------------------------------ round trip


def test_round_trip(artifact):
    directory, manifest = artifact
    assert directory == Path(directory.parent.parent) / "lite0" / "onnxruntime-fp32"
    loaded = Manifest.load(directory)
    assert loaded == manifest
    assert Manifest.load(directory / MANIFEST_NAME) == manifest  # the file itself works too
    assert loaded.to_json() == (directory / MANIFEST_NAME).read_text()
    data = saved_dict(directory)
    # tensor input: written as version 1, which every edgedet reads (SCHEMA_VERSION is the newest)
    assert list(data)[0] == "schema_version" and data["schema_version"] == 1 and SCHEMA_VERSION == 2
    assert "preprocessing" not in data["input"] and loaded.input.preprocessing == "runtime"
    assert data["input"]["shape"] == [1, 3, 320, 320]
    assert data["anchors"]["aspect_ratios"] == [[1.0, 1.0], [1.4, 0.7], [0.7, 1.4]]
    assert data["calibration"] is None and data["input"]["quantization"] is None
    for name in ("variant", "family", "phi", "num_classes", "labels", "input", "outputs", "anchors",
                 "backend", "precision", "files", "weights", "calibration", "float_layers", "parity",
                 "tools", "options", "created", "export_key"):
        assert name in data, name


def test_options_are_optional_on_read(tmp_path):
    """Manifests written before ``options`` existed still load (as no options)."""
    make_manifest(tmp_path, "lite0").save(tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    del data["options"]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    assert Manifest.load(tmp_path).options == {}


def test_round_trip_int8_with_quantized_io(tmp_path):
    m = make_manifest(tmp_path, "d0", precision="int8")
    m = dataclasses.replace(m, input=dataclasses.replace(m.input, dtype="uint8",
                                                         quantization=Quantization(0.0078, 127)))
    m.save(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert loaded == m
    assert loaded.input.quantization == Quantization(0.0078, 127)
    assert loaded.calibration == CalibrationInfo("synthetic:0", 8)
    assert loaded.float_layers == ("node_Sigmoid_1",)


def test_save_is_atomic_and_leaves_no_temp_files(artifact):
    directory, manifest = artifact
    manifest.save(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "model.onnx"]


def test_helpers(artifact):
    directory, manifest = artifact
    assert manifest.model_file == "model.onnx"
    assert manifest.model_path(directory) == directory / "model.onnx"
    assert manifest.output("box_regression").shape[-1] == 4
    assert manifest.artifact_name == "lite0/onnxruntime-fp32"
    assert manifest.image_size == manifest.input.image_size == 320


@pytest.mark.parametrize("variant", ["d0", "lite0", "d7x", "lite3x"])
def test_model_config_rebuilds_the_anchors(tmp_path, variant):
    manifest = make_manifest(tmp_path, variant)
    config = manifest.model_config()
    assert config.num_classes == 3
    assert manifest.anchors.num_anchors == get_config(variant).num_anchors()
    np.testing.assert_array_equal(generate_anchors(config), generate_anchors(get_config(variant)))


def test_model_config_without_the_table(tmp_path):
    """A variant this edgedet does not know still decodes: the anchors come from the manifest."""
    data = make_manifest(tmp_path, "lite0").to_dict()
    data["variant"] = "lite9"
    data["anchors"]["anchor_scale"] = 5.0
    config = Manifest.from_dict(data).model_config()
    assert config.name == "lite9" and config.anchors.anchor_scale == 5.0
    assert generate_anchors(config).shape == (get_config("lite0").num_anchors(), 4)


def test_export_key():
    a = export_key(variant="d0", precision="int8", tools={"onnx": "1", "torch": "2"})
    assert a == export_key(precision="int8", tools={"torch": "2", "onnx": "1"}, variant="d0")
    assert a != export_key(variant="d0", precision="fp32", tools={"onnx": "1", "torch": "2"})
    assert len(a) == 64


def test_stdlib_only():
    code = ("import sys, edgedet.manifest; "
            "bad = [m for m in ('numpy', 'torch', 'cv2') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------ validation


def mutate(data: dict, path: str, value=..., delete: bool = False) -> dict:
    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if delete:
        del target[last]
    else:
        target[int(last) if isinstance(target, list) else last] = value
    return data


@pytest.mark.parametrize("path, value, delete, expected", [
    ("schema_version", 3, False, r"'schema_version' is 3, .*upgrade edgedet"),
    ("schema_version", 2, False, r"'input.preprocessing' is missing"),
    ("input.preprocessing", "model", False, r"'input.preprocessing' is 'model' in a version 1 manifest"),
    ("schema_version", "1", False, r"'schema_version' must be an integer"),
    ("backend", None, True, r"'backend' is missing"),
    ("backend", "tensorrt", False, r"'backend' must be one of onnxruntime, openvino, tflite, torch, got 'tensorrt'"),
    ("precision", "int4", False, r"'precision' must be one of fp32, fp16, int8"),
    ("input.layout", "nchw", False, r"'input.layout' must be one of NCHW, NHWC"),
    ("input.dtype", "float64", False, r"'input.dtype' must be one of"),
    ("input.color", "BGR", False, r"'input.color' is 'BGR', but the runtime's preprocessing makes RGB"),
    ("input.color", "YUV", False, r"'input.color' must be one of RGB, BGR"),
    ("input.normalization.mean", [1, 2], False, r"'input.normalization.mean' must hold 3 numbers"),
    ("input.shape", [1, 3, 320], False, r"'input.shape' must be \[batch"),
    ("input.shape", [1, 3, 320, 0], False, r"'input.shape' must be a non-empty list of positive"),
    ("phi", "0", False, r"'phi' must be an integer, got a string"),
    ("num_classes", 4, False, r"'labels' has 3 names but num_classes is 4"),
    ("labels", "person", False, r"'labels' must be a list"),
    ("outputs.0.role", "scores", False, r"'outputs\[0\].role' must be one of cls_logits, box_regression"),
    ("outputs.1.role", "cls_logits", False, r"'outputs' must hold one output of each role"),
    ("outputs.0.shape", [1, 100, 3], False, r"'outputs\[0\].shape' is \[1, 100, 3\], but the anchors"),
    ("anchors.anchor_scale", "big", False, r"'anchors.anchor_scale' must be a finite number"),
    ("anchors.image_size", 512, False, r"'input.shape' .* is not the square 512 input"),
    ("anchors.aspect_ratios", [[1.0]], False, r"'anchors.aspect_ratios\[0\]' must be a \[width, height\]"),
    ("files", {}, False, r"'files' must list at least the model file"),
    ("files", {"model.xml": "0" * 64}, False, r"'files' must list the onnxruntime model file \(\*\.onnx\)"),
    ("files", {"../model.onnx": "0" * 64}, False, r"names must be relative"),
    ("files", {"model.onnx": "abc"}, False, r"must be a hex sha256"),
    ("weights.random", "yes", False, r"'weights.random' must be true or false"),
    ("weights.sha256", "xyz", False, r"'weights.sha256' must be a hex sha256 or null"),
    ("parity", [], False, r"'parity' must be an object"),
    ("tools", {"onnx": 1}, False, r"'tools' must be an object of string values"),
    ("options", {"int8_mode": True}, False, r"'options' must be an object of string values"),
    ("created", "yesterday", False, r"'created' must be an ISO 8601 time"),
    ("export_key", "", False, r"'export_key' must be a hex sha256"),
    ("precision", "int8", False, r"'calibration' must be set for an int8 artifact"),
])
def test_validation_errors(artifact, path, value, delete, expected):
    directory, _ = artifact
    write_dict(directory, mutate(saved_dict(directory), path, value, delete))
    with pytest.raises(ManifestError, match=expected) as info:
        Manifest.load(directory)
    assert str(directory / MANIFEST_NAME) in str(info.value)  # says which file
    assert isinstance(info.value, ValueError)


def frame_manifest(directory: Path) -> Manifest:
    """A valid manifest of an artifact that takes the uint8 frame canvas (preprocessing "model")."""
    m = make_manifest(directory)
    size = m.image_size
    return dataclasses.replace(m, schema_version=None, input=InputSpec(
        name="images", shape=(1, size, size, 3), layout="NHWC", dtype="uint8", normalization=m.input.normalization,
        color="BGR", quantization=None, preprocessing="model"))


def test_frame_input_round_trip_is_version_2(tmp_path):
    m = frame_manifest(tmp_path)
    assert m.schema_version == 2 and m.input.takes_frames and m.input.image_size == 320
    m.save(tmp_path)
    data = saved_dict(tmp_path)
    assert data["schema_version"] == 2 and data["input"]["preprocessing"] == "model"
    assert data["input"]["color"] == "BGR" and data["input"]["normalization"]["std"] == [128.0, 128.0, 128.0]
    assert Manifest.load(tmp_path) == m


def test_an_older_reader_refuses_frame_input(tmp_path, monkeypatch):
    """An edgedet that reads only version 1 refuses a frame-input manifest and says to upgrade,
    rather than feeding the artifact a normalized tensor; tensor-input manifests it still reads."""
    import edgedet.manifest as manifest_module

    frame_manifest(tmp_path / "frame").save(tmp_path / "frame")
    make_manifest(tmp_path / "tensor").save(tmp_path / "tensor")
    monkeypatch.setattr(manifest_module, "SUPPORTED_SCHEMA_VERSIONS", (1,))
    with pytest.raises(ManifestError, match=r"'schema_version' is 2, but this edgedet reads only version 1; "
                                            r"upgrade edgedet"):
        Manifest.load(tmp_path / "frame")
    assert Manifest.load(tmp_path / "tensor").input.preprocessing == "runtime"


@pytest.mark.parametrize("path, value, expected", [
    ("input.preprocessing", "gpu", r"'input.preprocessing' must be one of runtime, model, got 'gpu'"),
    ("input.preprocessing", None, r"'input.preprocessing' must not be null"),
    ("input.dtype", "float32", r"'input' takes the frame canvas .* must be NHWC uint8 without quantization"),
    ("input.quantization", {"scale": 0.5, "zero_point": 0}, r"must be NHWC uint8 without quantization, got NHWC "
                                                            r"uint8 with quantization"),
    ("input.layout", "NCHW", r"'input.shape' has 320 channels|must be NHWC"),
])
def test_malformed_frame_input_is_refused(tmp_path, path, value, expected):
    frame_manifest(tmp_path).save(tmp_path)
    write_dict(tmp_path, mutate(saved_dict(tmp_path), path, value))
    with pytest.raises(ManifestError, match=expected):
        Manifest.load(tmp_path)


def test_constructing_frame_input_at_version_1_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="needs version 2"):
        dataclasses.replace(frame_manifest(tmp_path), schema_version=1)


def test_unknown_extra_fields_are_ignored(artifact):
    directory, manifest = artifact
    write_dict(directory, {**saved_dict(directory), "future_field": {"x": 1}})
    assert Manifest.load(directory) == manifest


def test_not_json_and_missing(tmp_path):
    with pytest.raises(ManifestError, match="no manifest at .*edgedet-convert"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"schema_version": 1, ')
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(ManifestError, match="must be a JSON object"):
        Manifest.load(tmp_path)


def test_constructed_manifests_are_validated(tmp_path):
    good = make_manifest(tmp_path)
    with pytest.raises(ManifestError, match="'backend' must be one of"):
        dataclasses.replace(good, backend="coreml")
    with pytest.raises(ManifestError, match="'labels' has 2 names"):
        dataclasses.replace(good, labels=("a", "b"))


# ------------------------------------------------------------------------------------ integrity


def test_verify_files_passes(artifact):
    directory, manifest = artifact
    manifest.verify_files(directory)
    assert manifest.files_match(directory)


def test_hash_mismatch_detected(artifact):
    directory, manifest = artifact
    model = directory / "model.onnx"
    data = bytearray(model.read_bytes())
    data[10] ^= 0xFF  # one flipped byte, same size
    model.write_bytes(bytes(data))
    with pytest.raises(ManifestError) as info:
        manifest.verify_files(directory)
    message = str(info.value)
    assert str(model) in message
    assert manifest.files["model.onnx"] in message  # expected
    assert sha256_file(model) in message  # actual
    assert "re-export or re-copy the bundle" in message
    assert not manifest.files_match(directory)


def test_truncated_model_detected(artifact):
    directory, manifest = artifact
    model = directory / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(ManifestError, match="truncated, damaged or was replaced"):
        Manifest.load(directory).verify_files(directory)


def test_missing_model_detected(artifact):
    directory, manifest = artifact
    (directory / "model.onnx").unlink()
    with pytest.raises(ManifestError, match="'model.onnx' listed in the manifest is missing"):
        manifest.verify_files(directory)
