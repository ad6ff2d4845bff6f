"""Exponential moving average of a model's weights (evaluated and saved instead of the raw weights)."""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step.

    Every floating-point tensor of the state_dict (parameters and batch-norm statistics) is
    averaged; integer buffers (``num_batches_tracked``) are copied. With ``warmup`` the decay is
    ``min(decay, (1 + step) / (10 + step))`` (as TF's ``ExponentialMovingAverage(num_updates=)``),
    so a short run's average is not dominated by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = float(decay), warmup
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._bind(model)

    def _bind(self, model: nn.Module) -> None:
        # state_dict tensors share storage with the parameters/buffers, which the optimizer and
        # batch norm update in place, so these lists stay valid for the life of the models.
        ema_state, state = self.module.state_dict(), model.state_dict()
        if list(ema_state) != list(state):
            raise ValueError("the EMA model and the model have different state_dict keys")
        pairs = [(ema_state[k], state[k]) for k in state]
        self._float = [(e, m) for e, m in pairs if e.dtype.is_floating_point]
        self._other = [(e, m) for e, m in pairs if not e.dtype.is_floating_point]

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the bound model's current weights in (``step``: optimizer steps done, from 0)."""
        weight = 1.0 - self.decay_at(step)
        if self._float:
            ema_t = [e for e, _ in self._float]
            model_t = [m for _, m in self._float]
            torch._foreach_lerp_(ema_t, model_t, weight)
        for e, m in self._other:
            e.copy_(m)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
