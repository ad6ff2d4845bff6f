"""The step schedule of a training run: learning rate, data order, and fitting to a time limit.

Pure functions of their arguments (no torch state besides a local generator), so a resumed run
computes what an uninterrupted one would.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["CALIBRATION_STEPS", "BatchPlan", "eval_estimate", "fit_to_time", "lr_at", "out_of_time",
           "warmup_steps"]

#: Steps measured before the schedule is fitted to a time limit.
CALIBRATION_STEPS = 8


def lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up from ``base_lr / 10`` to ``base_lr`` over ``warmup_steps``, then cosine decay
    to ``base_lr * min_lr_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (0.1 + 0.9 * step / warmup_steps)
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def warmup_steps(warmup: float, total_steps: int) -> int:
    """The warm-up length in steps: ``warmup`` steps if >= 1, else that fraction of the schedule."""
    if warmup >= 1:
        return min(int(warmup), max(0, total_steps - 1))
    return int(round(warmup * total_steps))


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator()
    g.manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


class BatchPlan:
    """Batches of ``(epoch, index)`` keys from ``start_step`` on, epoch after epoch, without end.

    Epoch ``e``'s order is a permutation seeded by ``(seed, e)``; step ``s`` takes positions
    ``(s % steps_per_epoch) * batch_size ...`` of epoch ``s // steps_per_epoch`` (the last
    incomplete batch of an epoch is dropped). So the batches of a step never depend on how the run
    got there (resumed or not).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, steps_per_epoch: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.steps_per_epoch = start_step, steps_per_epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step, epoch, order = self.start_step, -1, []
        while True:
            e, k = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, order = e, _epoch_order(self.n, self.seed, e)
            yield [(epoch, i) for i in order[k * self.batch_size:(k + 1) * self.batch_size]]
            step += 1


def eval_estimate(step_times: list[float], eval_seconds: float | None, val_count: int, eval_bs: int,
                  do_eval: bool) -> float:
    """Seconds an evaluation takes: the last one's, or a guess from the training speed before any."""
    if not do_eval:
        return 0.0
    if eval_seconds is not None:
        return eval_seconds
    # Before the first evaluation: inference is ~1/3 of a training step, plus decoding and NMS.
    per_step = float(np.median(step_times)) if step_times else 1.0
    return 5.0 + math.ceil(val_count / max(1, eval_bs)) * per_step * 0.5


def out_of_time(session: float, step_times: list[float], limit_s: float, eval_seconds: float | None,
                val_count: int, eval_bs: int, do_eval: bool) -> bool:
    """Whether another step would leave too little of ``limit_s`` for the final evaluation and save."""
    per_step = float(np.median(step_times[-20:])) if step_times else 0.0
    reserve = eval_estimate(step_times, eval_seconds, val_count, eval_bs, do_eval) + 5.0
    return session + per_step + reserve > limit_s


def fit_to_time(step: int, cap: int, steps_per_epoch: int, step_times: list[float], session: float,
                limit_s: float, per_eval: float, eval_every: int) -> int:
    """The schedule length (at most ``cap``) whose remaining steps and evaluations end within
    ``limit_s`` seconds of the session's start."""
    recent = step_times[1:][-50:] or step_times
    per_step = float(np.median(recent)) * 1.03  # and loader hiccups
    remaining = limit_s - session - 10.0
    fitted = cap
    for _ in range(3):
        evals = (fitted - step) // max(1, steps_per_epoch * eval_every) + 1
        budget = remaining - evals * (per_eval + 2.0)  # + checkpoint writes
        fitted = min(cap, step + max(1, int(budget / per_step)))
    return fitted
