"""Latency measurement, device fingerprint and the profile cache."""
import json
import logging

import pytest

from edgedet.profiling import (CACHE_VERSION, LatencyStats, ProfileCache, ProfileImportError, TooSlow,
                               architecture_fingerprint, device_fingerprint, export_profiles, import_profiles,
                               main, measure, profile_key)


class FakeClock:
    """A deterministic clock: each call to the measured function advances time by a fixed step."""

    def __init__(self, step_ms: float) -> None:
        self.now, self.step = 0.0, step_ms / 1000

    def __call__(self) -> float:
        return self.now

    def work(self) -> None:
        self.now += self.step


def test_measure_excludes_warmup_and_reports_percentiles():
    clock = FakeClock(10.0)
    calls = []

    def fn():
        calls.append(1)
        clock.work()

    stats = measure(fn, warmup=4, runs=10, clock=clock)
    assert len(calls) == 14 and stats.runs == 10
    assert stats.p50 == pytest.approx(10.0) and stats.p90 == pytest.approx(10.0)


def test_measure_stops_early_when_far_over_time():
    clock = FakeClock(1000.0)
    stats = measure(clock.work, warmup=0, runs=50, clock=clock, max_seconds=2.5)
    assert 3 <= stats.runs < 50


def test_percentiles_from_samples():
    stats = LatencyStats.from_samples(list(range(1, 101)))
    assert stats.p50 == pytest.approx(50.5) and stats.p90 == pytest.approx(90.1)
    assert stats.percentile_ms(90) == stats.p90 and stats.percentile_ms(50) == stats.p50
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_fingerprint_names_cpu_cores_os_arch():
    fp = device_fingerprint()
    assert fp["cores"] >= 1 and fp["cpu"] and fp["os"] and fp["arch"]


def test_profile_key_changes_with_each_part():
    base = dict(architecture="a" * 32, backend="onnxruntime", runtime_version="1.0", threads=2,
                frame_size=(1280, 720))
    key = profile_key(**base)
    assert key == profile_key(**base)
    for change in ({"architecture": "b" * 32}, {"backend": "openvino"}, {"runtime_version": "1.1"},
                   {"threads": 1}, {"frame_size": (640, 480)}, {"device": "cuda"},
                   {"fingerprint": {"cpu": "other", "cores": 4, "os": "Linux", "arch": "aarch64"}}):
        assert profile_key(**{**base, **change}) != key, change


def test_cache_round_trip_and_atomic_file(tmp_path):
    path = tmp_path / "profiles.json"
    cache = ProfileCache(path)
    stats = LatencyStats.from_samples([10.0, 11.0, 12.0])
    cache.put("k1", stats, {"artifact": "d0/onnxruntime-fp32"})
    assert ProfileCache(path).get("k1") == stats
    assert ProfileCache(path).get("missing") is None
    assert [p.name for p in tmp_path.iterdir()] == ["profiles.json"]  # no temp files left behind


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 2, "profiles": {"k": {"latency": {}}}}),
                                     json.dumps({"version": 99, "profiles": {}}), ""])
def test_corrupt_cache_is_discarded_with_warning(tmp_path, caplog, content):
    path = tmp_path / "profiles.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING):
        cache = ProfileCache(path)
    assert len(cache) == 0
    assert "discarding" in caplog.text
    cache.put("k", LatencyStats.from_samples([1.0]))  # and it is usable again
    assert ProfileCache(path).get("k") is not None


def test_measure_rejects_on_first_warmup_call():
    clock = FakeClock(100.0)
    calls = []

    def fn():
        calls.append(1)
        clock.work()

    with pytest.raises(TooSlow) as slow:
        measure(fn, warmup=3, runs=20, clock=clock, reject_above_ms=90.0)
    assert len(calls) == 1 and slow.value.first_ms == pytest.approx(100.0)
    assert measure(fn, warmup=1, runs=2, clock=clock, reject_above_ms=150.0).runs == 2


def test_old_version_cache_is_discarded_with_warning(tmp_path, caplog):
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({"version": 1, "device": {}, "profiles": {
        "k": {"latency": {"p50": 1, "p90": 1, "p99": 1, "mean": 1, "min": 1, "runs": 3}}}}))
    with caplog.at_level(logging.WARNING):
        assert len(ProfileCache(path)) == 0
    assert "version 1" in caplog.text and "architecture" in caplog.text


# ------------------------------------------------------------------------------ fingerprint, fleet


def _manifest(directory):
    from edgedet.manifest import Manifest

    return Manifest.load(directory)


def test_architecture_fingerprint_ignores_weights_but_not_structure(onnx_exports):
    exports, _ = onnx_exports
    m = _manifest(exports / "d0" / "onnxruntime-int8")
    import dataclasses

    from edgedet.manifest import InputSpec, Quantization, WeightsInfo

    retrained = dataclasses.replace(
        m, files={m.model_file: "0" * 64}, weights=WeightsInfo("checkpoint:mine.pt", "1" * 64, False),
        parity={}, created="2030-01-01T00:00:00Z", export_key="2" * 64,
        outputs=tuple(dataclasses.replace(o, quantization=o.quantization and Quantization(0.5, 3))
                      for o in m.outputs))
    assert architecture_fingerprint(retrained) == architecture_fingerprint(m)
    others = [_manifest(exports / "d0" / "onnxruntime-fp32"), _manifest(exports / "lite0" / "onnxruntime-int8"),
              dataclasses.replace(m, float_layers=("head/conv",)), dataclasses.replace(m, options={"int8_mode": "x"}),
              dataclasses.replace(m, input=InputSpec(**{**m.input.__dict__, "shape": (2, *m.input.shape[1:])})),
              dataclasses.replace(m, tools={**m.tools, "onnx": "9.9"})]
    prints = {architecture_fingerprint(o) for o in others}
    assert architecture_fingerprint(m) not in prints and len(prints) == len(others)


def _entry(ms, backend="onnxruntime", version=None):
    from edgedet.backends import runtime_version

    return {"latency": {"p50": ms, "p90": ms, "p99": ms, "mean": ms, "min": ms, "runs": 20},
            "info": {"artifact": "d0/onnxruntime-int8", "runtime_backend": backend,
                     "runtime_version": version or runtime_version(backend)}, "measured": 0}


def test_export_then_import_on_an_identical_device(tmp_path):
    device_a, device_b, shared = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "fleet.json"
    ProfileCache(device_a).merge({"k1": _entry(12.0), "k2": _entry(20.0)})
    assert main(["export", str(shared), "--cache", str(device_a)]) == 0
    assert main(["import", str(shared), "--cache", str(device_b)]) == 0
    assert ProfileCache(device_b).get("k1").p90 == 12.0 and len(ProfileCache(device_b)) == 2


def test_import_refuses_another_device(tmp_path, caplog):
    shared = tmp_path / "fleet.json"
    export_profiles(tmp_path / "none.json", shared)
    data = json.loads(shared.read_text())
    data["device"] = {**data["device"], "cpu": "Cortex-A76", "cores": 4}
    shared.write_text(json.dumps(data))
    with pytest.raises(ProfileImportError, match="another device.*Cortex-A76"):
        import_profiles(shared, tmp_path / "cache.json")
    with caplog.at_level(logging.ERROR):
        assert main(["import", str(shared), "--cache", str(tmp_path / "cache.json")]) == 2
    assert "another device" in caplog.text and not (tmp_path / "cache.json").exists()


def test_import_refuses_another_runtime_version_and_skips_absent_runtimes(tmp_path):
    source, shared = tmp_path / "a.json", tmp_path / "fleet.json"
    ProfileCache(source).merge({"k1": _entry(12.0, version="0.0.1")})
    export_profiles(source, shared)
    with pytest.raises(ProfileImportError, match="other runtime versions.*0.0.1"):
        import_profiles(shared, tmp_path / "cache.json")
    ProfileCache(source).merge({"k1": _entry(12.0), "k2": _entry(9.0, backend="nnapi", version="1")})
    export_profiles(source, shared)
    versions = {"onnxruntime": _entry(1)["info"]["runtime_version"]}
    assert import_profiles(shared, tmp_path / "cache.json", runtime_versions=versions.get) == 1


@pytest.mark.parametrize("content", ["{oops", json.dumps({"format": "other"}),
                                     json.dumps({"format": "edgedet-profiles", "version": 1, "profiles": {}})])
def test_import_refuses_what_is_not_a_profile_file(tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(ProfileImportError, match="not a usable edgedet profile file"):
        import_profiles(bad, tmp_path / "cache.json")


def test_measure_stops_once_over_is_certain():
    clock = FakeClock(50.0)
    stats = measure(clock.work, warmup=1, runs=20, clock=clock, over_ms=30.0, percentile=90)
    assert stats.runs == 3 and stats.p90 == pytest.approx(50.0)  # 3 of 20 over: p90 is over
    assert measure(clock.work, warmup=1, runs=20, clock=clock, over_ms=30.0, percentile=50).runs == 11
    assert measure(clock.work, warmup=1, runs=20, clock=clock, over_ms=60.0).runs == 20
