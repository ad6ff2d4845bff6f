"""Bundles: pack a model directory, unpack it on a device with every hash checked."""
from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest

from edgedet.bundle import BundleError, _main, pack, unpack
from edgedet.data import SyntheticConfig, render
from edgedet.detector import Detector


@pytest.fixture(scope="module")
def lite0_models(onnx_exports, tmp_path_factory):
    out, _ = onnx_exports
    root = tmp_path_factory.mktemp("bundle_src")
    shutil.copytree(out / "lite0", root / "lite0")
    (root / "lite0" / ".staging-junk").mkdir()  # the converter's staging is never shipped
    return root


def test_round_trip_and_detector_takes_a_bundle(lite0_models, tmp_path, monkeypatch):
    bundle = pack(lite0_models, tmp_path / "models.edgedet")
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
    assert "bundle.json" in names and not any(".staging" in n for n in names)
    assert sorted(n for n in names if n.endswith("model.onnx")) == [
        f"lite0/onnxruntime-{p}/model.onnx" for p in ("fp16", "fp32", "int8")]

    unpacked = unpack(bundle, tmp_path / "device")
    assert (unpacked / "lite0" / "onnxruntime-int8" / "model.onnx").read_bytes() == (
        lite0_models / "lite0" / "onnxruntime-int8" / "model.onnx").read_bytes()

    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path / "cache"))
    detector = Detector(variant="lite0", precision="int8", models=bundle, profile_cache=False)
    assert str(tmp_path / "cache" / "bundles") in str(detector.artifact.directory)
    # The bundled artifact detects exactly what the one it was packed from does.
    frame = render(0, SyntheticConfig(image_size=(320, 240), seed=1))[0]
    direct = Detector(variant="lite0", precision="int8", models=lite0_models, profile_cache=False)(frame)
    served = detector(frame)
    assert len(direct) > 0, "realistic random weights give candidates above the threshold"
    np.testing.assert_array_equal(served.xyxy, direct.xyxy)
    np.testing.assert_array_equal(served.class_id, direct.class_id)
    np.testing.assert_array_equal(served.confidence, direct.confidence)


def test_truncated_bundle_is_refused_and_leaves_nothing(lite0_models, tmp_path):
    bundle = pack(lite0_models, tmp_path / "models.edgedet")
    bundle.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    with pytest.raises(BundleError, match="copy it again"):
        unpack(bundle, tmp_path / "device")
    assert not (tmp_path / "device").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["models.edgedet"]  # no staging left behind


def test_tampered_file_is_refused(lite0_models, tmp_path):
    bundle = pack(lite0_models, tmp_path / "models.edgedet")
    tampered = tmp_path / "tampered.edgedet"
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("fp32/model.onnx"):
                data = data[:-8] + b"\0" * 8
            dst.writestr(item, data)
    with pytest.raises(BundleError, match="sha256"):
        unpack(tampered, tmp_path / "device")
    assert not (tmp_path / "device").exists()


def test_path_escape_is_refused(tmp_path):
    evil = tmp_path / "evil.edgedet"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("bundle.json", '{"bundle_version": 1, "files": {"../x": "' + "0" * 64 + '"}}')
        archive.writestr("../x", b"boom")
    with pytest.raises(BundleError, match="outside the destination"):
        unpack(evil, tmp_path / "device")
    assert not (tmp_path / "x").exists()


def test_pack_refuses_a_damaged_artifact_and_empty_dirs(lite0_models, tmp_path):
    with pytest.raises(BundleError, match="no artifacts"):
        pack(tmp_path, tmp_path / "empty.edgedet")
    broken = tmp_path / "broken"
    shutil.copytree(lite0_models, broken)
    model = broken / "lite0" / "onnxruntime-fp32" / "model.onnx"
    model.write_bytes(model.read_bytes()[:100])
    assert _main(["pack", str(broken), str(tmp_path / "b.edgedet")]) == 1
    assert not (tmp_path / "b.edgedet").exists()
