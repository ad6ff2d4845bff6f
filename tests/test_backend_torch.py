"""The PyTorch reference backend: exported by the converter, served by the Detector when named,
never chosen automatically, and refused cleanly when its file is not an edgedet torch artifact."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from conftest import EXPORT_OPTIONS
from converters import convert
from converters.weights import build_model, resolve_weights
from edgedet.backends import BackendError, ModelLoadError, available_backends, load_backend
from edgedet.detector import Detector, NoArtifactsError
from edgedet.manifest import Manifest
from edgedet.model.checkpoint import save_checkpoint
from edgedet.preprocess import preprocess


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch_exports")
    report = convert("lite0", formats="torch", precisions="fp32", out_dir=out, **EXPORT_OPTIONS)
    assert report.ok, report.table()
    return out


def test_manifest_and_exact_parity(exported):
    directory = exported / "lite0" / "torch-fp32"
    manifest = Manifest.load(directory)
    manifest.verify_files(directory)
    assert (manifest.backend, manifest.precision, manifest.model_file) == ("torch", "fp32", "model.pt")
    assert manifest.input.shape == (1, 3, 320, 320) and manifest.input.layout == "NCHW"
    assert manifest.parity["passed"] is True and manifest.parity["cls_max_abs"] == 0.0


def test_backend_runs_the_same_model(exported):
    model = build_model("lite0", 90, resolve_weights("random", "lite0", allow_random=True))
    frame = (np.random.default_rng(1).random((240, 320, 3)) * 255).astype(np.uint8)
    batch, _ = preprocess([frame], 320, model.config.normalization.mean, model.config.normalization.std)
    backend = load_backend("torch", exported / "lite0" / "torch-fp32" / "model.pt", threads=2)
    outputs = backend.run(batch)
    with torch.no_grad():
        cls, box = model(torch.from_numpy(batch))
    np.testing.assert_array_equal(outputs["cls_logits"], cls.numpy())
    np.testing.assert_array_equal(outputs["box_regression"], box.numpy())
    assert [o.shape for o in backend.outputs] == [tuple(cls.shape), tuple(box.shape)]


def test_detector_serves_torch_only_when_named(exported):
    detector = Detector(variant="lite0", models=exported, backend="torch")
    assert (detector.backend, detector.precision) == ("torch", "fp32")
    frame = np.zeros((240, 320, 3), np.uint8)
    assert detector(frame).xyxy.shape[1] == 4
    assert "torch" not in available_backends()  # "auto" chooses among device runtimes only
    with pytest.raises(NoArtifactsError, match="usable here"):
        Detector(variant="lite0", models=exported)


def test_not_an_edgedet_artifact(tmp_path):
    plain = tmp_path / "plain.pt"
    save_checkpoint({"w": torch.zeros(1)}, plain)
    with pytest.raises(ModelLoadError, match="not an edgedet torch artifact"):
        load_backend("torch", plain)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_backend("torch", truncated)
    with pytest.raises(BackendError, match="device"):
        load_backend("torch", plain, device="tpu")


def test_torch_format_makes_fp32_only(tmp_path):
    from converters.base import ConvertError

    with pytest.raises(ConvertError, match="does not make int8"):
        convert("lite0", formats="torch", precisions="fp32,int8", out_dir=tmp_path, **EXPORT_OPTIONS)


def test_live_module_runs_through_the_artifact_pipeline(exported, tmp_path):
    """TorchBackend.from_module: a live model in the runtime's own Pipeline gives exactly the
    detections of its exported torch artifact as the Detector serves it, and its in-memory manifest
    says what the artifact's says about feeding and decoding it (but lists no files)."""
    from edgedet.backends.torch import TorchBackend
    from edgedet.data.synthetic import SyntheticConfig, render
    from edgedet.manifest import ManifestError
    from edgedet.pipeline import Pipeline

    model = build_model("lite0", 90, resolve_weights("random", "lite0", allow_random=True))
    backend = TorchBackend.from_module(model)
    live_manifest = backend.manifest()
    served = Detector(variant="lite0", models=exported, backend="torch", profile_cache=False, score_threshold=0.05)
    exported_manifest = served.artifact.manifest
    for field in ("variant", "family", "phi", "num_classes", "labels", "input", "outputs", "anchors", "backend",
                  "precision"):
        assert getattr(live_manifest, field) == getattr(exported_manifest, field), field
    assert live_manifest.in_memory and not exported_manifest.in_memory
    with pytest.raises(ManifestError, match="in memory"):
        live_manifest.save(tmp_path)

    live = Pipeline(live_manifest, backend, score_threshold=0.05)
    config = SyntheticConfig(image_size=(640, 480), max_objects=6)
    frames = [render(i, config)[0] for i in range(3)]
    found = 0
    for frame, detections in zip(frames, live(frames)):  # a batch of 3 through the live module
        expected = served(frame)
        np.testing.assert_allclose(detections.xyxy, expected.xyxy, atol=1e-3)
        np.testing.assert_allclose(detections.confidence, expected.confidence, atol=1e-5)
        np.testing.assert_array_equal(detections.class_id, expected.class_id)
        assert detections.labels == expected.labels
        found += len(detections)
    assert found > 0  # the comparison compared something
    assert model.training is False and backend.model is model  # run as it is, not copied
