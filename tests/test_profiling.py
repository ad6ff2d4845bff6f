"""Latency measurement, device fingerprint and the profile cache."""
import json
import logging

import pytest

from edgedet.profiling import LatencyStats, ProfileCache, device_fingerprint, measure, profile_key


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
    base = dict(artifact_sha256="a" * 64, backend="onnxruntime", runtime_version="1.0", threads=2,
                frame_size=(1280, 720))
    key = profile_key(**base)
    assert key == profile_key(**base)
    for change in ({"artifact_sha256": "b" * 64}, {"backend": "openvino"}, {"runtime_version": "1.1"},
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


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 1, "profiles": {"k": {"latency": {}}}}),
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
