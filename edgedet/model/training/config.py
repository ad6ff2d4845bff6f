"""The settings of a training run (:class:`TrainConfig`), with defaults resolved and checked."""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from edgedet.config import get_config
from edgedet.model.training.dataset import Augment

__all__ = ["DEFAULT_LR", "DEFAULT_WEIGHT_DECAY", "TrainConfig", "resolve_device"]

log = logging.getLogger("edgedet.model.training")

#: Default learning rates per optimizer (batch 8; see :func:`~edgedet.model.training.train`).
DEFAULT_LR = {"adamw": 2e-3, "sgd": 0.02}
DEFAULT_WEIGHT_DECAY = {"adamw": 0.01, "sgd": 4e-5}


@dataclass(frozen=True)
class TrainConfig:
    """The settings of a run, as recorded in every checkpoint's ``train_config`` metadata.

    Build one with :meth:`create` (defaults resolved, arguments checked); the
    :class:`~edgedet.model.training.trainer.Trainer` runs it. Adding a field changes what every
    checkpoint records.
    """

    variant: str
    image_size: int
    train_ann: str
    train_images: str
    val_ann: str | None
    val_images: str | None
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    warmup: float
    min_lr_ratio: float
    ema_decay: float | None
    clip_grad: float | None
    init: str
    drop_path_rate: float
    bn_momentum: float | None
    seed: int
    max_steps: int | None
    time_limit_minutes: float | None
    num_workers: int
    augment: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    num_threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def augmentation(self) -> Augment:
        """:attr:`augment` as an :class:`Augment`."""
        return Augment(**self.augment)

    @classmethod
    def create(
        cls,
        variant: str,
        train_ann: str | os.PathLike[str],
        train_images: str | os.PathLike[str],
        val_ann: str | os.PathLike[str] | None = None,
        val_images: str | os.PathLike[str] | None = None,
        *,
        epochs: int = 10,
        batch_size: int = 8,
        image_size: int | None = None,
        lr: float | None = None,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        weight_decay: float | None = None,
        warmup: float = 0.05,
        min_lr_ratio: float = 0.01,
        ema_decay: float | None = 0.999,
        clip_grad: float | None = 10.0,
        init: str = "scratch",
        drop_path_rate: float = 0.0,
        bn_momentum: float | None = None,
        augment: Augment | None = None,
        num_threads: int | None = None,
        device: str = "cpu",
        seed: int = 0,
        max_steps: int | None = None,
        time_limit_minutes: float | None = None,
        num_workers: int = 1,
    ) -> TrainConfig:
        """A checked config with every default resolved (the arguments are :func:`train`'s).

        The device is resolved here (``cuda`` without CUDA falls back to the CPU with a warning),
        and the thread count defaults to all cores. Raises :class:`ValueError` on bad settings.
        """
        if (val_ann is None) != (val_images is None):
            raise ValueError("give both val_ann and val_images, or neither")
        optimizer = optimizer.lower()
        if optimizer not in DEFAULT_LR:
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
        if epochs < 1 and max_steps is None:
            raise ValueError("epochs must be >= 1")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        config = get_config(variant)
        size = int(image_size or config.image_size)
        if size <= 0 or size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {size}")
        augment = Augment() if augment is None else augment
        if bn_momentum is None:
            # From scratch the checkpoints' 0.01 would leave the running statistics (which
            # evaluation uses) near their initial values for hundreds of steps.
            bn_momentum = 0.1 if init == "scratch" else None
        return cls(
            variant=config.name, image_size=size, train_ann=str(train_ann), train_images=str(train_images),
            val_ann=None if val_ann is None else str(val_ann),
            val_images=None if val_images is None else str(val_images), epochs=int(epochs),
            batch_size=int(batch_size), lr=float(lr if lr is not None else DEFAULT_LR[optimizer]),
            optimizer=optimizer, momentum=float(momentum),
            weight_decay=float(weight_decay if weight_decay is not None else DEFAULT_WEIGHT_DECAY[optimizer]),
            warmup=float(warmup), min_lr_ratio=float(min_lr_ratio),
            ema_decay=float(ema_decay) if ema_decay else None,
            clip_grad=None if clip_grad is None else float(clip_grad), init=str(init),
            drop_path_rate=float(drop_path_rate),
            bn_momentum=None if bn_momentum is None else float(bn_momentum), seed=int(seed),
            max_steps=max_steps, time_limit_minutes=time_limit_minutes, num_workers=int(num_workers),
            augment=augment.to_dict(), device=str(resolve_device(device)),
            num_threads=int(num_threads or os.cpu_count() or 1),
        )


def resolve_device(device: str) -> torch.device:
    """The torch device for ``"cpu"``/``"cuda"``/``"cuda:N"``; the CPU (with a warning) without CUDA."""
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            log.warning("device %r asked for but CUDA is not available: training on the CPU", device)
            return torch.device("cpu")
        return torch.device(device)
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return torch.device("cpu")
