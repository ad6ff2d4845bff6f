"""The adaptive serving policy, fed deterministic latencies and a fake clock (no runtimes)."""
from __future__ import annotations

import random

import pytest

from edgedet.adaptive import AdaptiveConfig, AdaptivePolicy, Rung, Switch, pareto_ladder

BUDGET = 30.0
#: profiled ms; accuracy grows down the list.
LADDER = [Rung("lite0-int8", 8.0, 1), Rung("lite1-fp32", 15.0, 2), Rung("d0-int8", 20.0, 3),
          Rung("d0-fp32", 26.0, 4)]


class Device:
    """A device whose speed changes: each call lasts profiled × slowdown (× noise), 1/fps apart."""

    def __init__(self, policy: AdaptivePolicy, *, fps: float = 20.0, noise: float = 0.0, seed: int = 0) -> None:
        self.policy, self.now, self.period, self.noise = policy, 0.0, 1 / fps, noise
        self.rng = random.Random(seed)
        self.switches: list[Switch] = []
        self.served: list[tuple[str, float]] = []

    def run(self, seconds: float, slowdown: float, spikes: dict[int, float] | None = None) -> None:
        for i in range(int(seconds / self.period)):
            rung = self.policy.serving
            # the profile is a high percentile, so calls are up to ``noise`` faster than it
            ms = rung.profiled_ms * slowdown * (1 - self.rng.uniform(0, self.noise))
            ms *= (spikes or {}).get(i, 1.0)
            self.served.append((rung.name, ms))
            switch = self.policy.observe(rung.name, ms, now=self.now)
            if switch:
                self.switches.append(switch)
            self.now += self.period


def policy(serving="d0-fp32", **config) -> AdaptivePolicy:
    return AdaptivePolicy(LADDER, BUDGET, serving, config=AdaptiveConfig(**config), clock=lambda: 0.0)


def test_steady_device_never_switches():
    device = Device(policy(), noise=0.1)
    device.run(30, slowdown=1.0)
    assert device.switches == []


def test_single_spike_does_not_switch():
    device = Device(policy())
    device.run(2, 1.0)
    device.run(10, 1.0, spikes={5: 10.0})  # one call ten times slower
    device.run(10, 1.0, spikes={3: 5.0, 150: 8.0})  # and two spikes far apart
    assert device.switches == []


def test_step_slowdown_steps_down_once_to_most_accurate_predicted_fit():
    device = Device(policy(), noise=0.05)
    device.run(5, 1.0)
    device.run(20, 1.6)  # d0-fp32 now 41.6 ms; predicted d0-int8 32, lite1 24 (<= 27: budget x 0.9)
    assert len(device.switches) == 1
    switch = device.switches[0]
    assert (switch.direction, switch.source, switch.target) == ("down", "d0-fp32", "lite1-fp32")
    assert switch.slowdown == pytest.approx(1.6, rel=0.06)
    assert switch.observed_ms > BUDGET and switch.predicted_ms <= BUDGET * 0.9
    assert "over the 30 ms budget" in switch.reason and "slowdown" in switch.reason
    # after the switch the served latency is back under budget and stays there
    after = [ms for name, ms in device.served if name == "lite1-fp32"]
    assert max(after) < BUDGET


def test_very_slow_device_goes_to_fastest():
    device = Device(policy())
    device.run(2, 1.0)
    device.run(10, 5.0)  # nothing is predicted to fit: the fastest is served
    assert [s.target for s in device.switches][:1] == ["lite0-int8"]
    assert device.policy.serving.name == "lite0-int8"


def test_recovery_steps_back_up_after_dwell():
    device = Device(policy(dwell_s=3.0), noise=0.05)
    device.run(3, 1.0)
    device.run(10, 1.6)
    device.run(20, 1.0)
    assert [(s.direction, s.target) for s in device.switches] == [("down", "lite1-fp32"), ("up", "d0-fp32")]
    down, up = device.switches
    assert up.at - down.at >= 3.0
    assert up.slowdown <= 1.1 and up.predicted_ms <= BUDGET and "recovered" in up.reason


def test_partial_recovery_inside_hysteresis_band_does_not_step_up():
    """At 1.15x d0-fp32 would be predicted 29.9 ms: within budget, but neither within budget x 0.8
    nor is the device back to its profiled speed; d0-int8 (23 ms) is."""
    device = Device(policy(), noise=0.02)
    device.run(2, 1.0)
    device.run(10, 1.6)
    device.run(30, 1.15)
    assert [s.direction for s in device.switches] == ["down", "up"]
    assert device.switches[1].target == "d0-int8"  # 21 ms predicted: the most accurate within 24 ms


def test_at_most_one_switch_per_change_of_conditions_with_noise():
    for seed in range(10):
        device = Device(policy(), noise=0.15, seed=seed)
        device.run(5, 1.0)
        device.run(20, 1.6)
        device.run(20, 1.0)
        assert [s.direction for s in device.switches] == ["down", "up"], (seed, [s.reason for s in device.switches])


def test_no_decision_before_min_samples_and_foreign_latencies_ignored():
    p = policy(min_samples=10)
    for i in range(9):
        assert p.observe("d0-fp32", 100.0, now=float(i)) is None
    assert p.observe("lite0-int8", 100.0, now=9.0) is None  # another artifact's call: ignored
    assert p.observed_ms() is None
    assert p.observe("d0-fp32", 100.0, now=10.0) is not None


def test_dwell_blocks_a_second_switch():
    p = policy(dwell_s=5.0, min_samples=3, window=3)
    t = 0.0
    for _ in range(3):
        switch = p.observe("d0-fp32", 45.0, now=t)
        t += 0.1
    assert switch and switch.target == "lite1-fp32"
    for _ in range(20):  # lite1 is over budget too, but within the dwell nothing moves
        assert p.observe("lite1-fp32", 60.0, now=t) is None
        t += 0.1
    t = 5.5
    assert p.observe("lite1-fp32", 60.0, now=t).target == "lite0-int8"


def test_neighbours_are_one_step_down_and_up():
    assert [r.name for r in policy("d0-int8").neighbours()] == ["lite1-fp32", "d0-fp32"]
    assert [r.name for r in policy("lite0-int8").neighbours()] == ["lite1-fp32"]


def test_pareto_ladder_drops_slower_less_accurate():
    rungs = [Rung("a", 10, 1), Rung("b", 30, 2), Rung("c", 20, 3), Rung("d", 40, 4), Rung("e", 25, 3)]
    assert [r.name for r in pareto_ladder(rungs)] == ["a", "c", "d"]  # b is slower than the better c


@pytest.mark.parametrize("bad", [dict(up_margin=0.9, down_margin=0.8), dict(min_samples=0),
                                 dict(min_samples=40, window=30), dict(dwell_s=-1),
                                 dict(recovered_slowdown=0.9)])
def test_config_is_checked(bad):
    with pytest.raises(ValueError):
        AdaptiveConfig(**bad)


def test_a_rung_profiled_over_budget_is_never_stepped_up_to():
    """The served artifact running faster than its profile (slowdown < 1) must not make a rung that
    the profile put over the budget look like a fit."""
    ladder = [Rung("lite0-int8", 23.0, 1), Rung("lite0-fp32", 32.6, 2)]
    p = AdaptivePolicy(ladder, BUDGET, "lite0-int8", config=AdaptiveConfig(dwell_s=0.0), clock=lambda: 0.0)
    for i in range(60):
        assert p.observe("lite0-int8", 19.0, now=i * 0.05) is None  # 0.83x its profile
    assert p.serving.name == "lite0-int8"


def test_flapping_backs_off():
    """A rung whose profile is too optimistic (it really runs 1.3x slower than profiled, the others
    as profiled) is retried ever more rarely instead of after every dwell."""
    p = policy(serving="d0-int8", dwell_s=2.0)
    now, ups = 0.0, 0
    for _ in range(int(120 / 0.05)):  # two minutes at 20 calls per second
        rung = p.serving
        ms = rung.profiled_ms * (1.3 if rung.name == "d0-fp32" else 1.0)
        switch = p.observe(rung.name, ms, now=now)
        if switch and switch.direction == "up":
            ups += 1
        now += 0.05
    # without the back-off: a step up every ~2.5 s (dwell, then 10 calls), ~45 in two minutes
    assert 2 <= ups <= 7, ups
