"""edgedet.Detector on real exported artifacts: selection by budget, the profile cache, detection,
bad input, thread safety.

Latencies are made deterministic in two allowed ways: a fake device profile written into the
profile cache under the real keys, or an injected clock for the measurements themselves. The
artifacts, runtimes and detections are all real.
"""
from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from edgedet.backends import ModelLoadError, load_backend, runtime_version
from edgedet.detector import BudgetError, Detector, NoArtifactsError, find_artifacts
from edgedet.manifest import ManifestError
from edgedet.preprocess import InputError
from edgedet.profiling import LatencyStats, ProfileCache, architecture_fingerprint, profile_key
from clocks import StepClock

FRAME_SIZE = (640, 480)


@pytest.fixture(scope="module")
def models(onnx_exports, lite_family_exports, tmp_path_factory):
    """One model directory: lite0, lite1, lite2 and d0 (ONNX; lite0/d0 at fp32, fp16, int8)."""
    root = tmp_path_factory.mktemp("models")
    exports, _ = onnx_exports
    for source in (exports / "lite0", exports / "d0", lite_family_exports / "lite1", lite_family_exports / "lite2"):
        shutil.copytree(source, root / source.name)
    return root


def fake_profile(cache_path: Path, models: Path, latencies: dict[str, float], *, threads=None) -> None:
    """Write a device profile: {artifact name: p90 ms} under the keys the Detector will look up."""
    cache = ProfileCache(cache_path)
    for artifact in find_artifacts(models):
        if artifact.name in latencies:
            ms = latencies[artifact.name]
            key = profile_key(architecture=architecture_fingerprint(artifact.manifest), backend=artifact.manifest.backend,
                              runtime_version=runtime_version(artifact.manifest.backend), threads=threads,
                              frame_size=FRAME_SIZE)
            cache.put(key, LatencyStats(ms, ms, ms, ms, ms, 20))


def frame(seed=0, size=(480, 640)):
    from edgedet.data.synthetic import SyntheticConfig, render

    image, _ = render(seed, SyntheticConfig(image_size=(size[1], size[0]), seed=seed))
    return image


def detector(models, cache, budget, **kw):
    return Detector(budget, models=models, profile_cache=cache, frame_size=FRAME_SIZE, **kw)


# ------------------------------------------------------------------------------------ selection

LATENCIES = {"lite0/onnxruntime-fp32": 12.0, "lite0/onnxruntime-fp16": 14.0, "lite0/onnxruntime-int8": 9.0,
             "lite1/onnxruntime-fp32": 22.0, "lite2/onnxruntime-fp32": 35.0,
             "d0/onnxruntime-fp32": 40.0, "d0/onnxruntime-fp16": 45.0, "d0/onnxruntime-int8": 28.0}


@pytest.mark.parametrize("budget, expected", [
    (100.0, "lite2/onnxruntime-fp32"),  # everything fits: lite2 (35.1 AP) beats d0 (34.3 AP)
    (30.0, "d0/onnxruntime-int8"),    # d0 only as INT8; lite2 misses, and d0 beats lite1 (31.5 AP)
    (25.0, "lite1/onnxruntime-fp32"),  # d0 misses entirely; Lite walks to lite1
    (13.0, "lite0/onnxruntime-fp32"),  # fp32 fits, so it beats the faster int8
    (10.0, "lite0/onnxruntime-int8"),  # only int8 fits
])
def test_largest_phi_within_budget(models, tmp_path, budget, expected):
    cache = tmp_path / "profiles.json"
    fake_profile(cache, models, LATENCIES)
    det = detector(models, cache, budget)
    assert det.artifact.name == expected
    assert det.latency_ms == LATENCIES[expected]
    assert (det.variant, det.backend, det.precision) == tuple(expected.replace("/onnxruntime-", " onnxruntime ").split())
    assert all(row.source == "cache" for row in det.profile if row.latency_ms is not None)


def test_walk_stops_at_first_miss(models, tmp_path):
    """lite1 misses the budget, so lite2 is never measured even though its (fake) profile would fit."""
    cache = tmp_path / "profiles.json"
    fake_profile(cache, models, {**LATENCIES, "lite1/onnxruntime-fp32": 50.0, "lite2/onnxruntime-fp32": 5.0,
                                 "d0/onnxruntime-fp32": 90.0, "d0/onnxruntime-fp16": 90.0,
                                 "d0/onnxruntime-int8": 90.0})
    det = detector(models, cache, 20.0)
    assert det.artifact.name == "lite0/onnxruntime-fp32"
    rows = {row.artifact: row for row in det.profile}
    assert rows["lite1/onnxruntime-fp32"].fits is False
    assert rows["lite2/onnxruntime-fp32"].source == "skipped (walk stopped: lite1/onnxruntime-fp32 missed)"
    assert rows["lite2/onnxruntime-fp32"].latency_ms is None
    assert "lite2/onnxruntime-fp32" in str(det.profile)


def test_budget_error_names_fastest_and_what_helps(models, tmp_path):
    cache = tmp_path / "profiles.json"
    fake_profile(cache, models, LATENCIES)
    with pytest.raises(BudgetError) as error:
        detector(models, cache, 5.0)
    message = str(error.value)
    assert "lite0/onnxruntime-int8" in message and "9.0 ms" in message
    assert "INT8" in message and "backend" in message


def test_on_miss_smallest_serves_fastest_with_warning(models, tmp_path, caplog):
    cache = tmp_path / "profiles.json"
    fake_profile(cache, models, LATENCIES)
    with caplog.at_level(logging.WARNING):
        det = detector(models, cache, 5.0, on_miss="smallest")
    assert det.artifact.name == "lite0/onnxruntime-int8"
    assert "no artifact meets" in caplog.text
    # It serves that artifact: the same detections as asking for it by name.
    served, named = det(frame()), Detector(variant="lite0", precision="int8", models=models, profile_cache=False)(frame())
    assert len(named) > 0
    np.testing.assert_array_equal(served.xyxy, named.xyxy)
    np.testing.assert_array_equal(served.class_id, named.class_id)


def test_filters_by_backend_precision_and_variant(models, tmp_path):
    cache = tmp_path / "profiles.json"
    fake_profile(cache, models, LATENCIES)
    assert detector(models, cache, 100.0, precision="int8").artifact.name == "d0/onnxruntime-int8"
    assert detector(models, cache, 30.0, precision="fp32").artifact.name == "lite1/onnxruntime-fp32"
    det = Detector(variant="lite1", models=models, profile_cache=False)
    assert det.artifact.name == "lite1/onnxruntime-fp32" and det.latency_ms is None
    with pytest.raises(NoArtifactsError, match="found:"):
        Detector(variant="d3", models=models, profile_cache=False)


def test_measures_then_reuses_cache_keyed_by_threads_and_frame(models, tmp_path):
    """Real measurement (with a deterministic clock), then a second start that measures nothing."""
    one = tmp_path / "one"
    shutil.copytree(models / "lite0" / "onnxruntime-int8", one / "lite0" / "onnxruntime-int8")
    cache = tmp_path / "profiles.json"
    first = Detector(30, models=one, profile_cache=cache, frame_size=FRAME_SIZE, threads=1,
                     clock=StepClock(7.0), warmup=1, runs=5)
    assert first.latency_ms == pytest.approx(7.0)
    assert [row.source for row in first.profile] == ["measured"]
    stored = json.loads(cache.read_text())["profiles"]
    assert len(stored) == 1

    second = Detector(30, models=one, profile_cache=cache, frame_size=FRAME_SIZE, threads=1,
                      clock=StepClock(1000.0))  # would be over budget if it measured
    assert [row.source for row in second.profile] == ["cache"] and second.latency_ms == pytest.approx(7.0)

    for change in ({"threads": 2}, {"frame_size": (1280, 720)}):
        options = {"threads": 1, "frame_size": FRAME_SIZE, **change}
        other = Detector(30, models=one, profile_cache=cache, clock=StepClock(3.0), warmup=1, runs=3, **options)
        assert [row.source for row in other.profile] == ["measured"], change
    assert len(json.loads(cache.read_text())["profiles"]) == 3

    refreshed = Detector(30, models=one, profile_cache=cache, frame_size=FRAME_SIZE, threads=1,
                         clock=StepClock(4.0), warmup=1, runs=3, refresh=True)
    assert [row.source for row in refreshed.profile] == ["measured"] and refreshed.latency_ms == pytest.approx(4.0)


def test_no_artifacts_says_where_and_how(tmp_path):
    with pytest.raises(NoArtifactsError) as error:
        Detector(30, models=tmp_path / "empty", profile_cache=False)
    assert str(tmp_path / "empty") in str(error.value) and "edgedet-convert" in str(error.value)


@pytest.mark.parametrize("budget", [0, -5, float("nan"), float("inf"), "30"])
def test_impossible_budget_is_a_clear_error(models, budget):
    with pytest.raises(ValueError, match="budget_ms"):
        Detector(budget, models=models, profile_cache=False)


def test_needs_budget_or_variant(models):
    with pytest.raises(ValueError, match="budget"):
        Detector(models=models)


# ------------------------------------------------------------------------------------ detection


def test_detections_equal_pytorch_through_the_same_pipeline(models):
    """The ONNX FP32 artifact served by the Detector finds what the PyTorch model finds."""
    import torch

    from converters.weights import build_model, resolve_weights
    from edgedet.anchors import generate_anchors
    from edgedet.config import get_config
    from edgedet.postprocess import postprocess
    from edgedet.preprocess import preprocess

    det = Detector(variant="lite0", precision="fp32", models=models, profile_cache=False, score_threshold=0.2)
    image = frame(3)
    found = det(image)
    config = get_config("lite0")
    model = build_model("lite0", 90, resolve_weights("random", "lite0", allow_random=True))
    batch, (letterbox,) = preprocess(image, config.image_size, config.normalization.mean, config.normalization.std)
    with torch.no_grad():
        cls, box = (t.numpy()[0] for t in model(torch.from_numpy(batch)))
    boxes, scores, classes = postprocess(cls, box, generate_anchors(config), score_threshold=0.2)
    letterbox.to_frame(boxes)
    assert len(found) == len(scores) > 0
    np.testing.assert_allclose(found.xyxy, boxes, atol=0.05)
    np.testing.assert_allclose(found.confidence, scores, atol=1e-4)
    np.testing.assert_array_equal(found.class_id, classes)
    h, w = image.shape[:2]
    assert (found.xyxy[:, [0, 2]] <= w).all() and (found.xyxy[:, [1, 3]] <= h).all() and (found.xyxy >= 0).all()


def test_batch_and_rgb(models):
    det = Detector(variant="lite0", precision="fp32", models=models, profile_cache=False, score_threshold=0.2)
    frames = [frame(1), frame(2, size=(300, 500)), frame(3)]
    batch = det.detect_batch(frames)
    assert [len(d) for d in batch] == [len(det(f)) for f in frames]
    rgb = Detector(variant="lite0", precision="fp32", models=models, profile_cache=False, score_threshold=0.2,
                   rgb=True)
    np.testing.assert_allclose(rgb(np.ascontiguousarray(frames[0][..., ::-1])).xyxy, batch[0].xyxy, atol=1e-3)


def _huge():
    return np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), shape=(20000, 6000, 3), strides=(0, 0, 1))


@pytest.mark.parametrize("bad, match", [
    (None, "None"), (np.zeros((0, 0, 3), np.uint8), "empty"), (np.zeros((48, 64), np.uint8), "grayscale"),
    (np.zeros((48, 64, 4), np.uint8), "4 channels"), (np.zeros((48, 64, 3), np.float32), "uint8"),
    (np.zeros((2, 48, 64, 3), np.uint8), "3 dimensions"), (np.zeros(10, np.uint8), "3 dimensions"),
    (_huge(), "pixel limit"), ([np.zeros((48, 64, 3), np.uint8)], "one frame"),
])
def test_bad_input_is_a_clear_error(models, bad, match):
    det = Detector(variant="lite0", precision="int8", models=models, profile_cache=False)
    with pytest.raises(InputError, match=match):
        det(bad)


def test_truncated_model_is_refused(models, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(models / "lite0" / "onnxruntime-fp32", broken / "lite0" / "onnxruntime-fp32")
    model = broken / "lite0" / "onnxruntime-fp32" / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(ManifestError, match="does not match its manifest"):
        Detector(variant="lite0", models=broken, profile_cache=False)
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_backend("onnxruntime", model)


def test_manifest_of_another_file_is_refused(models, tmp_path):
    mixed = tmp_path / "models"
    shutil.copytree(models / "lite0" / "onnxruntime-fp32", mixed / "lite0" / "onnxruntime-fp32")
    shutil.copy(models / "lite0" / "onnxruntime-int8" / "model.onnx", mixed / "lite0" / "onnxruntime-fp32")
    with pytest.raises(ManifestError, match="sha256"):
        Detector(variant="lite0", models=mixed, profile_cache=False)


def test_one_detector_shared_by_threads_equals_serial(models):
    det = Detector(variant="d0", precision="int8", models=models, profile_cache=False, score_threshold=0.2)
    frames = [frame(i) for i in range(6)]
    serial = [det(f) for f in frames]
    results: dict[int, list] = {}

    def work(worker: int) -> None:
        results[worker] = [det(f) for f in frames]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for worker in range(4):
        for got, want in zip(results[worker], serial):
            assert got == want
