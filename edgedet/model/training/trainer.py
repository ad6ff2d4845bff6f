"""Fine-tune (or train from scratch) an EfficientDet on COCO-format data.

``train(...)`` runs the loop: the augmented :class:`~edgedet.model.training.dataset.CocoDetection` in one
worker process, :class:`~edgedet.model.training.loss.DetectionLoss`, AdamW or SGD with linear warm-up and
cosine decay, gradient clipping, an EMA of the weights, COCO mAP of the EMA weights on the
validation split after every epoch (:func:`edgedet.model.evaluate.evaluate_model`, the runtime's own
pre- and post-processing), and checkpoints in ``out``:

``best.pth``
    the EMA weights of the best validation AP, with metadata (``load_checkpoint`` and
    ``converters`` read it; ``load_metadata`` gives variant, image size, class names...);
``last.pt``
    everything needed to resume (weights, EMA, optimizer, step, epoch, RNG); ``load_checkpoint``
    reads its EMA weights too;
``history.jsonl``
    one line per evaluation (step, epoch, losses, learning rate, metrics, elapsed time).

Every checkpoint is written atomically. ``resume=True`` continues from ``last.pt`` at the saved
step, in the middle of an epoch if that is where the run stopped: the data order and
augmentations are functions of (seed, epoch, index), so a resumed run sees what an uninterrupted
one would.

Budgets: ``max_steps`` caps the step count (and is the schedule's length); ``time_limit_minutes``
stops the run in time for a final evaluation and checkpoint, and (unless ``max_steps`` is given)
sets the learning-rate schedule's length from the measured speed after the first steps, and again
after every evaluation (speeds drift on a shared machine), so that the cosine decay ends within
the limit; the schedule is never longer than ``epochs`` allow. Such a run's step count depends on
the machine's speed; pass ``max_steps`` for a fixed one.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgedet._atomic import atomic_writer
from edgedet._progress import progress_bar
from edgedet.anchors import generate_anchors
from edgedet.config import get_config
from edgedet.model import EfficientDet, create_model
from edgedet.model.checkpoint import load_checkpoint, load_metadata, save_checkpoint
from edgedet.model.training.dataset import Augment, CocoDetection, collate
from edgedet.model.training.ema import ModelEma
from edgedet.model.training.loss import DetectionLoss

__all__ = ["TrainConfig", "TrainResult", "load_trained", "lr_at", "train"]

log = logging.getLogger("edgedet.model.training")

BEST_NAME = "best.pth"
LAST_NAME = "last.pt"
HISTORY_NAME = "history.jsonl"
#: Format of ``last.pt``'s ``trainer`` block; bump on incompatible changes.
STATE_VERSION = 1
#: Default learning rates per optimizer (batch 8; see ``train``'s docstring).
DEFAULT_LR = {"adamw": 2e-3, "sgd": 0.02}
DEFAULT_WEIGHT_DECAY = {"adamw": 0.01, "sgd": 4e-5}
#: Steps measured before the schedule is fitted to a time limit.
_CALIBRATION_STEPS = 8


@dataclass(frozen=True)
class TrainConfig:
    """The settings of a run, as recorded in every checkpoint's ``train_config`` metadata."""

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


@dataclass
class TrainResult:
    """What a run produced."""

    out: Path
    best_path: Path | None
    last_path: Path
    best_metrics: dict[str, float] | None
    last_metrics: dict[str, float] | None
    steps: int
    total_steps: int
    epochs_done: float
    train_seconds: float
    images_seen: int
    stopped_by: str  # "schedule", "max_steps", "time_limit"
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Median wall time of a training step in this call (data waits included, evaluation not).
    seconds_per_step: float | None = None
    #: The final weights (the EMA's, as saved), in eval mode on the training device.
    model: EfficientDet | None = field(default=None, repr=False)

    @property
    def best_map(self) -> float | None:
        return None if self.best_metrics is None else self.best_metrics["AP"]


def lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up from ``base_lr / 10`` to ``base_lr`` over ``warmup_steps``, then cosine decay
    to ``base_lr * min_lr_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (0.1 + 0.9 * step / warmup_steps)
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _warmup_steps(warmup: float, total_steps: int) -> int:
    if warmup >= 1:
        return min(int(warmup), max(0, total_steps - 1))
    return int(round(warmup * total_steps))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            # biases, batch-norm affine parameters and BiFPN fusion weights: no decay
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _make_optimizer(name: str, model: torch.nn.Module, lr: float, weight_decay: float,
                    momentum: float) -> torch.optim.Optimizer:
    groups = _param_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")


def _resolve_device(device: str) -> torch.device:
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            log.warning("device %r asked for but CUDA is not available: training on the CPU", device)
            return torch.device("cpu")
        return torch.device(device)
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return torch.device("cpu")


def _worker_init(_: int) -> None:
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator()
    g.manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


class _BatchPlan:
    """Batches of ``(epoch, index)`` keys from ``start_step`` on, epoch after epoch, without end.

    Epoch ``e``'s order is a permutation seeded by ``(seed, e)``; step ``s`` takes positions
    ``(s % steps_per_epoch) * batch_size ...`` of epoch ``s // steps_per_epoch`` (the last
    incomplete batch of an epoch is dropped). So the batches of a step never depend on how the run
    got there (resumed or not).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, steps_per_epoch: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.steps_per_epoch = start_step, steps_per_epoch

    def __iter__(self):
        step, epoch, order = self.start_step, -1, []
        while True:
            e, k = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, order = e, _epoch_order(self.n, self.seed, e)
            yield [(epoch, i) for i in order[k * self.batch_size:(k + 1) * self.batch_size]]
            step += 1


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_writer(path, "wb") as f:
        torch.save(obj, f)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _restoring_threads(fn):
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        previous = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper


@_restoring_threads
def train(
    variant: str,
    train_ann: str | os.PathLike[str],
    train_images: str | os.PathLike[str],
    val_ann: str | os.PathLike[str] | None = None,
    val_images: str | os.PathLike[str] | None = None,
    *,
    out: str | os.PathLike[str],
    epochs: int = 10,
    batch_size: int = 8,
    image_size: int | None = None,
    lr: float | None = None,
    optimizer: Literal["adamw", "sgd"] = "adamw",
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
    resume: bool = False,
    overwrite: bool = False,
    max_steps: int | None = None,
    time_limit_minutes: float | None = None,
    num_workers: int = 1,
    eval_every: int = 1,
    eval_batch_size: int | None = None,
    val_limit: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``variant`` on a COCO split; write ``best.pth``, ``last.pt`` and ``history.jsonl`` to ``out``.

    Args:
        variant: ``"lite0"``, ``"d0"``... (:data:`edgedet.config.VARIANTS`).
        train_ann, train_images: the training split's COCO json and image folder.
        val_ann, val_images: the validation split (optional: without it ``best.pth`` is the last
            EMA weights and no mAP is recorded).
        out: output folder.
        epochs: passes over the training split (the schedule's length unless ``max_steps``).
        batch_size: images per step (the last incomplete batch of an epoch is dropped).
        image_size: square input side if not the variant's native one (a multiple of 32; recorded
            in the checkpoint metadata, and the size the model must be built at to use it).
        lr: peak learning rate; default 2e-3 for AdamW, 0.02 for SGD (batch 8; scale linearly).
        optimizer: ``"adamw"`` or ``"sgd"`` (Nesterov, ``momentum``).
        weight_decay: default 0.01 (AdamW) or 4e-5 (SGD); never applied to biases and norms.
        warmup: linear warm-up length: steps if >= 1, else a fraction of the schedule.
        min_lr_ratio: the cosine decay ends at ``lr * min_lr_ratio``.
        ema_decay: decay of the weights' EMA (evaluated and saved); None or 0 disables it.
        clip_grad: max gradient norm (effdet: 10); None disables clipping.
        init: ``"scratch"`` (random init), or a checkpoint for :func:`load_checkpoint` (a path, a URL,
            ``"tf_efficientdet_lite0"``/``"lite0"`` for the published COCO weights); a class head
            of another class count is re-initialized.
        drop_path_rate: stochastic depth in the backbone (0 suits short runs).
        bn_momentum: batch-norm running-statistics momentum while training (torch convention).
            Default: 0.1 from scratch (the checkpoints' 0.01 would leave the running statistics,
            which evaluation uses, near their initial values for hundreds of steps), and the
            model's own 0.01 when fine-tuning a checkpoint, whose statistics are already right.
        augment: training augmentation (default :class:`Augment()`; ``Augment.none()`` disables).
        num_threads: torch CPU threads (default: all cores).
        device: ``"cpu"`` or ``"cuda"`` (falls back to the CPU with a warning if unavailable).
        seed: seeds initialization, data order, augmentation and dropout.
        resume: continue from ``out/last.pt``.
        overwrite: start afresh even if ``out/last.pt`` exists (else that is an error).
        max_steps: stop after this many optimizer steps (and end the schedule there).
        time_limit_minutes: wall-clock budget of this call (see the module docstring).
        num_workers: data-loading processes (1 keeps decoding off the training thread). They are
            *spawned* (a forked child of a process running OpenCV/torch thread pools can
            deadlock), so a script calling ``train`` needs an ``if __name__ == "__main__":`` guard.
        eval_every: evaluate every this many epochs (and always at the end).
        eval_batch_size: batch of the evaluation (default ``batch_size``).
        val_limit: evaluate on the first images of the validation split only.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`TrainResult`.
    """
    started = time.monotonic()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / LAST_NAME, out_dir / BEST_NAME
    resuming = resume and last_path.exists() and not overwrite
    if not resuming:
        existing = [p for p in (last_path, best_path) if p.exists()]
        if existing and not overwrite:
            hint = "pass resume=True (--resume) to continue that run, " if last_path.exists() else ""
            raise FileExistsError(f"{existing[0]} exists: {hint}pass overwrite=True (--overwrite) to "
                                  f"start afresh, or use another output folder")
        for stale in (last_path, best_path, out_dir / HISTORY_NAME):
            stale.unlink(missing_ok=True)
    if (val_ann is None) != (val_images is None):
        raise ValueError("give both val_ann and val_images, or neither")
    optimizer = optimizer.lower()  # type: ignore[assignment]
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
    lr = float(lr if lr is not None else DEFAULT_LR[optimizer])
    weight_decay = float(weight_decay if weight_decay is not None else DEFAULT_WEIGHT_DECAY[optimizer])
    ema_decay = float(ema_decay) if ema_decay else None
    dev = _resolve_device(device)
    threads = int(num_threads or os.cpu_count() or 1)
    torch.set_num_threads(threads)  # restored on return by @_restoring_threads

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)

    train_set = CocoDetection(train_ann, train_images, size, config.normalization, augment=augment, seed=seed)
    if len(train_set) == 0:
        raise ValueError(f"{train_ann} has no images")
    if len(train_set) < batch_size:
        log.warning("only %d training images: batch size lowered from %d", len(train_set), batch_size)
        batch_size = len(train_set)
    steps_per_epoch = len(train_set) // batch_size
    num_classes = train_set.num_classes
    class_names, category_ids = train_set.class_names, train_set.category_ids

    cfg = TrainConfig(
        variant=config.name, image_size=size, train_ann=str(train_ann), train_images=str(train_images),
        val_ann=None if val_ann is None else str(val_ann),
        val_images=None if val_images is None else str(val_images), epochs=int(epochs),
        batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=float(momentum),
        weight_decay=weight_decay, warmup=float(warmup), min_lr_ratio=float(min_lr_ratio),
        ema_decay=ema_decay, clip_grad=None if clip_grad is None else float(clip_grad), init=str(init),
        drop_path_rate=float(drop_path_rate),
        bn_momentum=(0.1 if init == "scratch" else None) if bn_momentum is None else float(bn_momentum),
        seed=int(seed), max_steps=max_steps,
        time_limit_minutes=time_limit_minutes, num_workers=int(num_workers), augment=augment.to_dict(),
        device=str(dev), num_threads=threads,
    )
    planned = epochs * steps_per_epoch if max_steps is None else int(max_steps)

    # ---- model, EMA, optimizer -------------------------------------------------------------
    model = create_model(config.name, num_classes=num_classes, image_size=size, drop_path_rate=drop_path_rate)
    state: dict[str, Any] | None = None
    if resuming:
        state = _load_state(last_path)
        _check_resumable(state, cfg, num_classes)
        model.load_state_dict(state["state_dict"])
    elif init != "scratch":
        report = load_checkpoint(model, init, num_classes_mismatch="reinit")
        log.info("initialized from %s (%d tensors%s)", init, report["loaded"],
                 ", class head re-initialized" if report["skipped"] else "")
    elif resume:
        log.info("no %s yet: starting a new run", last_path)
    if bn_momentum is None:
        bn_momentum = 0.1 if init == "scratch" else None
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = float(bn_momentum)
    model.to(dev).train()
    ema = ModelEma(model, ema_decay) if ema_decay else None
    opt = _make_optimizer(optimizer, model, lr, weight_decay, momentum)
    criterion = DetectionLoss(generate_anchors(model.config, size)).to(dev)

    step, total_steps, best_metrics, last_metrics = 0, planned, None, None
    history: list[dict[str, Any]] = []
    images_seen, train_seconds_before = 0, 0.0
    fitted = 0  # 1 once the schedule has been fitted to the time limit
    if state is not None:
        trainer = state["trainer"]
        step = int(trainer["step"])
        saved_cfg = trainer["train_config"]
        same_plan = (saved_cfg.get("epochs") == cfg.epochs and saved_cfg.get("max_steps") == cfg.max_steps
                     and saved_cfg.get("batch_size") == cfg.batch_size)
        total_steps = int(trainer["total_steps"]) if same_plan else planned
        best_metrics = trainer.get("best_metrics")
        last_metrics = trainer.get("last_metrics")
        images_seen = int(trainer.get("images_seen", 0))
        train_seconds_before = float(trainer.get("train_seconds", 0.0))
        fitted = int(trainer.get("fitted", 0)) if same_plan else 0
        if ema is not None and state.get("state_dict_ema") is not None:
            ema.load_state_dict(state["state_dict_ema"])
        if state.get("optimizer") is not None and saved_cfg.get("optimizer") == optimizer:
            opt.load_state_dict(state["optimizer"])
        else:
            log.warning("optimizer changed from %s to %s: its state starts afresh",
                        saved_cfg.get("optimizer"), optimizer)
        if "torch_rng" in trainer:
            torch.set_rng_state(trainer["torch_rng"])
        history = _read_history(out_dir / HISTORY_NAME)
        log.info("resuming %s at step %d/%d (epoch %.2f)", last_path, step, total_steps,
                 step / steps_per_epoch)
    warmup_steps = _warmup_steps(warmup, total_steps)

    do_eval = val_ann is not None
    eval_bs = int(eval_batch_size or batch_size)
    val_count = 0
    if do_eval:
        from edgedet.evaluate import load_dataset

        val_count = len(load_dataset(val_ann)["images"])
        if val_limit is not None:
            val_count = min(val_count, int(val_limit))
    limit_s = None if time_limit_minutes is None else float(time_limit_minutes) * 60.0
    eval_seconds_est: float | None = None

    def evaluate() -> dict[str, float] | None:
        nonlocal eval_seconds_est
        if not do_eval:
            return None
        from edgedet.model.evaluate import evaluate_model

        t0 = time.monotonic()
        metrics = evaluate_model(ema.module if ema is not None else model, val_ann, val_images,
                                 batch_size=eval_bs, device=dev, labels=class_names,
                                 category_ids=category_ids, limit=val_limit)
        eval_seconds_est = time.monotonic() - t0
        return metrics

    def metadata(metrics: dict[str, float] | None, epoch: float) -> dict[str, Any]:
        return {
            "variant": config.name, "image_size": size, "num_classes": num_classes,
            "class_names": list(class_names), "category_ids": list(category_ids),
            "val_map": None if metrics is None else float(metrics["AP"]),
            "val_metrics": None if metrics is None else dict(metrics),
            "epoch": float(epoch), "step": int(step), "train_config": cfg.to_dict(),
        }

    def save_last(session_seconds: float) -> None:
        payload = {
            "state_dict": model.state_dict(),
            "state_dict_ema": None if ema is None else ema.state_dict(),
            "optimizer": opt.state_dict(),
            "edgedet": _plain(metadata(last_metrics, step / steps_per_epoch)),
            "trainer": {
                "version": STATE_VERSION, "step": step, "total_steps": total_steps, "fitted": fitted,
                "best_metrics": best_metrics, "last_metrics": last_metrics, "images_seen": images_seen,
                "train_seconds": train_seconds_before + session_seconds,
                "train_config": cfg.to_dict(), "torch_rng": torch.get_rng_state(),
            },
        }
        if ema is None:
            del payload["state_dict_ema"]
        _atomic_torch_save(payload, last_path)

    def record(metrics: dict[str, float] | None, losses: dict[str, float], session_seconds: float) -> None:
        nonlocal best_metrics, last_metrics
        last_metrics = metrics
        epoch = step / steps_per_epoch
        entry = {"step": step, "epoch": round(epoch, 4), **{k: round(v, 5) for k, v in losses.items()},
                 "lr": lr_at(max(0, step - 1), total_steps, lr, warmup_steps, min_lr_ratio),
                 "train_seconds": round(train_seconds_before + session_seconds, 1),
                 **({} if metrics is None else {k: round(v, 5) for k, v in metrics.items()})}
        history.append(entry)
        with open(out_dir / HISTORY_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        weights = ema.module if ema is not None else model
        improved = metrics is None or best_metrics is None or metrics["AP"] >= best_metrics["AP"]
        if improved:
            best_metrics = metrics
            save_checkpoint(weights, best_path, metadata=metadata(metrics, epoch))
        if metrics is not None:
            log.info("step %d (epoch %.2f): val AP %.4f AP50 %.4f (best %.4f)", step, epoch,
                     metrics["AP"], metrics["AP50"], best_metrics["AP"] if best_metrics else float("nan"))

    def refit(session_seconds: float, per_eval: float) -> None:
        nonlocal total_steps, warmup_steps
        assert limit_s is not None
        new_total = _fit_to_time(step, planned, steps_per_epoch, step_times, session_seconds, limit_s,
                                 per_eval, eval_every)
        if abs(new_total - total_steps) > 0.03 * total_steps:
            log.info("time limit %.1f min: schedule set to %d steps (planned %d; %.2f s/step, %.0f s "
                     "per evaluation)", limit_s / 60, new_total, planned,
                     float(np.median(step_times[1:][-50:] or step_times)), per_eval)
            total_steps = new_total
            warmup_steps = _warmup_steps(warmup, total_steps)
            bar.total = total_steps
            bar.refresh()

    # ---- the loop ----------------------------------------------------------------------------
    session_start = started  # the time limit counts from the call, set-up included
    stopped_by = "schedule"
    running: dict[str, float] = {}
    window: dict[str, float] = {"loss": 0.0, "cls_loss": 0.0, "box_loss": 0.0, "n": 0}
    step_times: list[float] = []
    bad_steps = 0
    last_eval_step = history[-1]["step"] if history else -1
    bar = progress_bar(total_steps, "train", unit="step", enabled=progress, initial=step)
    plan = _BatchPlan(len(train_set), batch_size, seed, step, steps_per_epoch)
    loader = DataLoader(
        train_set, batch_sampler=plan, num_workers=num_workers, collate_fn=collate,
        pin_memory=dev.type == "cuda", worker_init_fn=_worker_init if num_workers > 0 else None,
        prefetch_factor=4 if num_workers > 0 else None,
        # spawn, not fork: a forked child of a process whose OpenCV/torch thread pools are running
        # can deadlock (seen here: cv2.setNumThreads in a forked worker never returns).
        multiprocessing_context="spawn" if num_workers > 0 else None,
    )
    batches = iter(loader) if step < total_steps else iter(())
    try:
        t_prev = time.monotonic()
        while step < total_steps:
            batch = next(batches)
            current_lr = lr_at(step, total_steps, lr, warmup_steps, min_lr_ratio)
            for group in opt.param_groups:
                group["lr"] = current_lr
            images = batch["images"].to(dev, non_blocking=True)
            cls_out, box_out = model(images)
            loss, parts = criterion(cls_out, box_out, batch["boxes"], batch["labels"])
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                bad_steps += 1
                log.warning("step %d: non-finite loss (%s), skipped", step, float(loss))
                if bad_steps >= 5:
                    raise FloatingPointError("5 non-finite losses in a row: lower the learning rate")
                continue
            bad_steps = 0
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            opt.step()
            if ema is not None:
                ema.update(step)
            step += 1
            images_seen += images.shape[0]
            value = float(loss.detach())
            for key, v in (("loss", value), ("cls_loss", parts["cls_loss"]), ("box_loss", parts["box_loss"])):
                running[key] = v if key not in running else 0.9 * running[key] + 0.1 * v
                window[key] += v
            window["n"] += 1
            now = time.monotonic()
            step_times.append(now - t_prev)  # wall time per step, data waits included
            t_prev = now
            bar.update(1)
            bar.set_postfix(loss=f"{running['loss']:.3f}", cls=f"{running['cls_loss']:.3f}",
                            box=f"{running['box_loss']:.4f}", lr=f"{current_lr:.2e}", refresh=False)

            session = now - session_start
            # Fit the schedule to the time limit once the speed is known (and again after each
            # evaluation, whose cost is then known too).
            if (limit_s is not None and max_steps is None and fitted == 0
                    and len(step_times) >= _CALIBRATION_STEPS):
                refit(session, _eval_estimate(step_times, None, val_count, eval_bs, do_eval))
                fitted = 1
            at_epoch_end = step % steps_per_epoch == 0
            stop = step < total_steps and limit_s is not None and _out_of_time(
                session, step_times, limit_s, eval_seconds_est, val_count, eval_bs, do_eval)
            if stop:
                stopped_by = "time_limit"
                log.info("time limit: stopping at step %d of %d", step, total_steps)
            final = stop or step >= total_steps
            if final or (at_epoch_end and (step // steps_per_epoch) % max(1, eval_every) == 0):
                losses = {k: window[k] / max(1, window["n"]) for k in ("loss", "cls_loss", "box_loss")}
                window = {"loss": 0.0, "cls_loss": 0.0, "box_loss": 0.0, "n": 0}
                bar.clear()
                metrics = evaluate()
                last_eval_step = step
                record(metrics, losses, time.monotonic() - session_start)
                if (limit_s is not None and max_steps is None and not final
                        and len(step_times) >= 2 * _CALIBRATION_STEPS):
                    # Speeds drift on a shared machine: keep the cosine ending at the limit.
                    refit(time.monotonic() - session_start, eval_seconds_est or 0.0)
                    fitted = 1
                save_last(time.monotonic() - session_start)
                t_prev = time.monotonic()
            elif at_epoch_end:
                save_last(time.monotonic() - session_start)
                t_prev = time.monotonic()
            if final:
                break
        if max_steps is not None and step >= max_steps and stopped_by == "schedule":
            stopped_by = "max_steps"
        if last_eval_step != step:  # e.g. a resume of a finished run
            save_last(time.monotonic() - session_start)
    except KeyboardInterrupt:
        log.warning("interrupted at step %d: saving %s (resume with --resume)", step, last_path)
        save_last(time.monotonic() - session_start)
        raise
    finally:
        del batches, loader  # shuts the worker down
        bar.close()

    session = time.monotonic() - session_start
    s_per_step = float(np.median(step_times[1:] or step_times)) if step_times else None
    if s_per_step:
        log.info("%d steps in %.1f s this session (%.2f s/step median, %.1f images/s); stopped by %s",
                 len(step_times), session, s_per_step, batch_size / s_per_step, stopped_by)
    return TrainResult(
        out=out_dir, best_path=best_path if best_path.exists() else None, last_path=last_path,
        best_metrics=best_metrics, last_metrics=last_metrics, steps=step, total_steps=total_steps,
        epochs_done=step / steps_per_epoch, train_seconds=train_seconds_before + session,
        images_seen=images_seen, stopped_by=stopped_by, history=history, seconds_per_step=s_per_step,
        model=(ema.module if ema is not None else model).eval(),
    )


# --------------------------------------------------------------------------------------- helpers

def _eval_estimate(step_times: list[float], eval_seconds: float | None, val_count: int, eval_bs: int,
                   do_eval: bool) -> float:
    if not do_eval:
        return 0.0
    if eval_seconds is not None:
        return eval_seconds
    # Before the first evaluation: inference is ~1/3 of a training step, plus decoding and NMS.
    per_step = float(np.median(step_times)) if step_times else 1.0
    return 5.0 + math.ceil(val_count / max(1, eval_bs)) * per_step * 0.5


def _out_of_time(session: float, step_times: list[float], limit_s: float, eval_seconds: float | None,
                 val_count: int, eval_bs: int, do_eval: bool) -> bool:
    per_step = float(np.median(step_times[-20:])) if step_times else 0.0
    reserve = _eval_estimate(step_times, eval_seconds, val_count, eval_bs, do_eval) + 5.0
    return session + per_step + reserve > limit_s


def _fit_to_time(step: int, cap: int, steps_per_epoch: int, step_times: list[float], session: float,
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


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem to the user
        raise RuntimeError(f"cannot resume from {path}: {exc}; delete it or pass overwrite=True") from exc
    if not isinstance(state, Mapping) or "trainer" not in state or "state_dict" not in state:
        raise RuntimeError(f"{path} is not a training state written by edgedet.model.training")
    if int(state["trainer"].get("version", 0)) != STATE_VERSION:
        raise RuntimeError(f"{path} has training-state version {state['trainer'].get('version')}, "
                           f"this edgedet writes {STATE_VERSION}")
    return dict(state)


def _check_resumable(state: Mapping[str, Any], cfg: TrainConfig, num_classes: int) -> None:
    saved = state["trainer"]["train_config"]
    for key in ("variant", "image_size"):
        if saved.get(key) != getattr(cfg, key):
            raise ValueError(f"cannot resume: the saved run has {key}={saved.get(key)!r}, this one "
                             f"{getattr(cfg, key)!r} (use another output folder)")
    meta = state.get("edgedet", {})
    if meta.get("num_classes") not in (None, num_classes):
        raise ValueError(f"cannot resume: the saved run has {meta.get('num_classes')} classes, the "
                         f"training split {num_classes}")


def _read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def load_trained(path: str | os.PathLike[str], *, device: str = "cpu") -> EfficientDet:
    """Build the model a ``best.pth``/``last.pt`` of :func:`train` describes and load its weights."""
    meta = load_metadata(path)
    if "variant" not in meta:
        raise ValueError(f"{path} has no edgedet training metadata (variant, image_size, ...)")
    model = create_model(meta["variant"], num_classes=int(meta["num_classes"]),
                         image_size=int(meta["image_size"]))
    load_checkpoint(model, path)
    return model.to(device).eval()
