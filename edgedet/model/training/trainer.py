"""Fine-tune (or train from scratch) an EfficientDet on COCO-format data.

``train(...)`` (or :class:`Trainer` with a :class:`TrainConfig`) runs the loop: the augmented :class:`~edgedet.model.training.dataset.CocoDetection` in one
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

import logging
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgedet._progress import progress_bar
from edgedet.anchors import generate_anchors
from edgedet.config import get_config
from edgedet.model import EfficientDet, create_model
from edgedet.model.checkpoint import load_checkpoint, load_metadata, save_checkpoint
from edgedet.model.training.config import TrainConfig
from edgedet.model.training.dataset import Augment, CocoDetection, collate
from edgedet.model.training.ema import ModelEma
from edgedet.model.training.loss import DetectionLoss
from edgedet.model.training.schedule import (
    CALIBRATION_STEPS,
    BatchPlan,
    eval_estimate,
    fit_to_time,
    lr_at,
    out_of_time,
    warmup_steps,
)
from edgedet.model.training.state import (
    BEST_NAME,
    HISTORY_NAME,
    LAST_NAME,
    STATE_VERSION,
    append_history,
    atomic_torch_save,
    check_resumable,
    load_state,
    plain,
    read_history,
)

__all__ = ["TrainConfig", "TrainResult", "Trainer", "load_trained", "lr_at", "train"]

log = logging.getLogger("edgedet.model.training")

_LOSS_KEYS = ("loss", "cls_loss", "box_loss")


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


class Trainer:
    """One training run of a :class:`TrainConfig`, writing into ``out`` (see the module docstring).

    ``Trainer(config, out).run()`` sets up (output folder, data, model, EMA, optimizer, resumed
    state), then loops :meth:`train_step` until the schedule, ``max_steps`` or the time limit ends
    it, evaluating and checkpointing on the way.

    Extension points, for a data-parallel (torchrun) subclass: :meth:`make_loader` (shard the
    batches per rank), :meth:`train_step` (forward/backward of one batch: through a
    ``DistributedDataParallel`` wrapper, while :attr:`model` stays the bare module that
    checkpoints save), and the steps such a run does on rank 0 only: :meth:`evaluate`,
    :meth:`record` (history, ``best.pth``, logging) and :meth:`save_last`; :attr:`is_main` says
    whether this process shows progress.

    Args:
        config: the run's settings (:meth:`TrainConfig.create`).
        out: output folder.
        resume: continue from ``out/last.pt`` if it exists.
        overwrite: start afresh even if ``out/last.pt`` exists (else that is an error).
        eval_every: evaluate every this many epochs (and always at the end).
        eval_batch_size: batch of the evaluation (default the training batch).
        val_limit: evaluate on the first images of the validation split only.
        progress: show a tqdm progress bar.
    """

    #: Whether this process reports progress (a data-parallel subclass: rank 0 only).
    is_main: bool = True

    def __init__(self, config: TrainConfig, out: str | os.PathLike[str], *, resume: bool = False,
                 overwrite: bool = False, eval_every: int = 1, eval_batch_size: int | None = None,
                 val_limit: int | None = None, progress: bool = True) -> None:
        self.cfg = config
        self.out_dir = Path(out)
        self.last_path, self.best_path = self.out_dir / LAST_NAME, self.out_dir / BEST_NAME
        self.history_path = self.out_dir / HISTORY_NAME
        self.resume, self.overwrite = resume, overwrite
        self.eval_every = eval_every
        self.eval_batch_size = eval_batch_size
        self.val_limit = val_limit
        self.progress = progress
        self.device = torch.device(config.device)
        self.do_eval = config.val_ann is not None
        self.limit_s = None if config.time_limit_minutes is None else float(config.time_limit_minutes) * 60.0
        # Progress of the run (saved in last.pt, restored on resume).
        self.step = 0
        self.total_steps = 0
        self.warmup_steps = 0
        self.fitted = 0  # 1 once the schedule has been fitted to the time limit
        self.best_metrics: dict[str, float] | None = None
        self.last_metrics: dict[str, float] | None = None
        self.history: list[dict[str, Any]] = []
        self.images_seen = 0
        self.train_seconds_before = 0.0
        # This call's measurements.
        self.step_times: list[float] = []
        self.eval_seconds: float | None = None
        self.stopped_by = "schedule"

    # ---- running -----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Set up, train, and return what the run produced. Restores torch's thread count."""
        previous = torch.get_num_threads()
        try:
            self._started = time.monotonic()  # the time limit counts from here, set-up included
            self._prepare_output()
            torch.set_num_threads(int(self.cfg.num_threads or os.cpu_count() or 1))
            self._seed()
            self._load_data()
            self._build_model()
            self._loop()
            return self._result()
        finally:
            torch.set_num_threads(previous)

    def session_seconds(self) -> float:
        """Seconds since this call started."""
        return time.monotonic() - self._started

    def _loop(self) -> None:
        self.bar = progress_bar(self.total_steps, "train", unit="step", enabled=self.progress and self.is_main,
                                initial=self.step)
        self._running: dict[str, float] = {}
        self._reset_window()
        self._last_eval_step = self.history[-1]["step"] if self.history else -1
        bad_steps = 0
        loader = self.make_loader()
        batches = iter(loader) if self.step < self.total_steps else iter(())
        try:
            self._t_prev = time.monotonic()
            while self.step < self.total_steps:
                current_lr = self.lr_now()
                losses = self.train_step(next(batches), current_lr)
                if losses is None:
                    bad_steps += 1
                    if bad_steps >= 5:
                        raise FloatingPointError("5 non-finite losses in a row: lower the learning rate")
                    continue
                bad_steps = 0
                self._track(losses, current_lr)
                if self._after_step():
                    break
            if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps and self.stopped_by == "schedule":
                self.stopped_by = "max_steps"
            if self._last_eval_step != self.step:  # e.g. a resume of a finished run
                self.save_last()
        except KeyboardInterrupt:
            log.warning("interrupted at step %d: saving %s (resume with --resume)", self.step, self.last_path)
            self.save_last()
            raise
        finally:
            del batches, loader  # shuts the worker down
            self.bar.close()

    def lr_now(self) -> float:
        """The learning rate of the next step."""
        return lr_at(self.step, self.total_steps, self.cfg.lr, self.warmup_steps, self.cfg.min_lr_ratio)

    def train_step(self, batch: dict[str, Any], lr: float) -> dict[str, float] | None:
        """One optimizer step on ``batch`` at learning rate ``lr``; the losses, or None if the loss
        was not finite (the step is skipped)."""
        for group in self.opt.param_groups:
            group["lr"] = lr
        images = batch["images"].to(self.device, non_blocking=True)
        cls_out, box_out = self.forward(images)
        loss, parts = self.criterion(cls_out, box_out, batch["boxes"], batch["labels"])
        self.opt.zero_grad(set_to_none=True)
        if not self.all_finite(loss):
            log.warning("step %d: non-finite loss (%s), skipped", self.step, float(loss))
            return None
        loss.backward()
        if self.cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.opt.step()
        if self.ema is not None:
            self.ema.update(self.step)
        self.step += 1
        self.images_seen += self.cfg.batch_size
        return {"loss": float(loss.detach()), "cls_loss": parts["cls_loss"], "box_loss": parts["box_loss"]}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training forward pass (a data-parallel run goes through its DDP wrapper)."""
        return self.model(images)

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether this step's loss is finite (a data-parallel run: on every rank, or all skip it)."""
        return bool(torch.isfinite(loss))

    def _track(self, losses: dict[str, float], lr: float) -> None:
        for key in _LOSS_KEYS:
            v = losses[key]
            self._running[key] = v if key not in self._running else 0.9 * self._running[key] + 0.1 * v
            self._window[key] += v
        self._window["n"] += 1
        now = time.monotonic()
        self.step_times.append(now - self._t_prev)  # wall time per step, data waits included
        self._t_prev = now
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self._running['loss']:.3f}", cls=f"{self._running['cls_loss']:.3f}",
                             box=f"{self._running['box_loss']:.4f}", lr=f"{lr:.2e}", refresh=False)

    def _reset_window(self) -> None:
        self._window: dict[str, float] = {"loss": 0.0, "cls_loss": 0.0, "box_loss": 0.0, "n": 0}

    def _after_step(self) -> bool:
        """Fit the schedule, stop, evaluate and checkpoint as due after a step; True at the end."""
        cfg, session = self.cfg, self.session_seconds()
        fits_time = self.limit_s is not None and cfg.max_steps is None
        # Fit the schedule to the time limit once the speed is known (and again after each
        # evaluation, whose cost is then known too).
        if fits_time and self.fitted == 0 and len(self.step_times) >= CALIBRATION_STEPS:
            self.refit(session, eval_estimate(self.step_times, None, self._val_count, self._eval_bs, self.do_eval))
            self.fitted = 1
        at_epoch_end = self.step % self.steps_per_epoch == 0
        stop = self.step < self.total_steps and self.limit_s is not None and out_of_time(
            session, self.step_times, self.limit_s, self.eval_seconds, self._val_count, self._eval_bs, self.do_eval)
        if stop:
            self.stopped_by = "time_limit"
            log.info("time limit: stopping at step %d of %d", self.step, self.total_steps)
        final = stop or self.step >= self.total_steps
        if final or (at_epoch_end and (self.step // self.steps_per_epoch) % max(1, self.eval_every) == 0):
            losses = {k: self._window[k] / max(1, self._window["n"]) for k in _LOSS_KEYS}
            self._reset_window()
            self.bar.clear()
            metrics = self.evaluate()
            self._last_eval_step = self.step
            self.record(metrics, losses)
            if fits_time and not final and len(self.step_times) >= 2 * CALIBRATION_STEPS:
                # Speeds drift on a shared machine: keep the cosine ending at the limit.
                self.refit(self.session_seconds(), self.eval_seconds or 0.0)
                self.fitted = 1
            self.save_last()
            self._t_prev = time.monotonic()
        elif at_epoch_end:
            self.save_last()
            self._t_prev = time.monotonic()
        return final

    def refit(self, session_seconds: float, per_eval: float) -> None:
        """Set the schedule's length so that it ends within the time limit."""
        assert self.limit_s is not None
        new_total = fit_to_time(self.step, self.planned, self.steps_per_epoch, self.step_times, session_seconds,
                                self.limit_s, per_eval, self.eval_every)
        if abs(new_total - self.total_steps) > 0.03 * self.total_steps:
            log.info("time limit %.1f min: schedule set to %d steps (planned %d; %.2f s/step, %.0f s "
                     "per evaluation)", self.limit_s / 60, new_total, self.planned,
                     float(np.median(self.step_times[1:][-50:] or self.step_times)), per_eval)
            self.total_steps = new_total
            self.warmup_steps = warmup_steps(self.cfg.warmup, self.total_steps)
            self.bar.total = self.total_steps
            self.bar.refresh()

    # ---- evaluation, records and checkpoints (rank 0 only in a data-parallel run) ------------

    @property
    def weights(self) -> EfficientDet:
        """The weights evaluated and saved: the EMA's if one is kept."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self) -> dict[str, float] | None:
        """COCO metrics of :attr:`weights` on the validation split (None without one)."""
        if not self.do_eval:
            return None
        from edgedet.model.evaluate import evaluate_model

        t0 = time.monotonic()
        metrics = evaluate_model(self.weights, self.cfg.val_ann, self.cfg.val_images, batch_size=self._eval_bs,
                                 device=self.device, labels=self.class_names, category_ids=self.category_ids,
                                 limit=self.val_limit)
        self.eval_seconds = time.monotonic() - t0
        return metrics

    def metadata(self, metrics: dict[str, float] | None, epoch: float) -> dict[str, Any]:
        """The ``edgedet`` metadata of a checkpoint written now."""
        return {
            "variant": self.cfg.variant, "image_size": self.cfg.image_size, "num_classes": self.num_classes,
            "class_names": list(self.class_names), "category_ids": list(self.category_ids),
            "val_map": None if metrics is None else float(metrics["AP"]),
            "val_metrics": None if metrics is None else dict(metrics),
            "epoch": float(epoch), "step": int(self.step), "train_config": self.cfg.to_dict(),
        }

    def record(self, metrics: dict[str, float] | None, losses: dict[str, float]) -> None:
        """Append an evaluation to the history; save ``best.pth`` if it is the best so far."""
        self.last_metrics = metrics
        epoch = self.step / self.steps_per_epoch
        cfg = self.cfg
        entry = {"step": self.step, "epoch": round(epoch, 4), **{k: round(v, 5) for k, v in losses.items()},
                 "lr": lr_at(max(0, self.step - 1), self.total_steps, cfg.lr, self.warmup_steps, cfg.min_lr_ratio),
                 "train_seconds": round(self.train_seconds_before + self.session_seconds(), 1),
                 **({} if metrics is None else {k: round(v, 5) for k, v in metrics.items()})}
        self.history.append(entry)
        append_history(self.history_path, entry)
        best = self.best_metrics
        if metrics is None or best is None or metrics["AP"] >= best["AP"]:
            self.best_metrics = best = metrics
            save_checkpoint(self.weights, self.best_path, metadata=self.metadata(metrics, epoch))
        if metrics is not None:
            log.info("step %d (epoch %.2f): val AP %.4f AP50 %.4f (best %.4f)", self.step, epoch,
                     metrics["AP"], metrics["AP50"], best["AP"] if best else float("nan"))

    def save_last(self) -> None:
        """Write ``last.pt``: everything needed to resume at the current step."""
        payload = {
            "state_dict": self.model.state_dict(),
            "state_dict_ema": None if self.ema is None else self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "edgedet": plain(self.metadata(self.last_metrics, self.step / self.steps_per_epoch)),
            "trainer": {
                "version": STATE_VERSION, "step": self.step, "total_steps": self.total_steps,
                "fitted": self.fitted, "best_metrics": self.best_metrics, "last_metrics": self.last_metrics,
                "images_seen": self.images_seen,
                "train_seconds": self.train_seconds_before + self.session_seconds(),
                "train_config": self.cfg.to_dict(), "torch_rng": torch.get_rng_state(),
            },
        }
        if self.ema is None:
            del payload["state_dict_ema"]
        atomic_torch_save(payload, self.last_path)

    # ---- set-up ------------------------------------------------------------------------------

    def _prepare_output(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        last_path, best_path = self.last_path, self.best_path
        self.resuming = self.resume and last_path.exists() and not self.overwrite
        if self.resuming:
            return
        existing = [p for p in (last_path, best_path) if p.exists()]
        if existing and not self.overwrite:
            hint = "pass resume=True (--resume) to continue that run, " if last_path.exists() else ""
            raise FileExistsError(f"{existing[0]} exists: {hint}pass overwrite=True (--overwrite) to "
                                  f"start afresh, or use another output folder")
        for stale in (last_path, best_path, self.history_path):
            stale.unlink(missing_ok=True)

    def _seed(self) -> None:
        seed = self.cfg.seed
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)

    def _load_data(self) -> None:
        cfg = self.cfg
        self.train_set = CocoDetection(cfg.train_ann, cfg.train_images, cfg.image_size,
                                       get_config(cfg.variant).normalization, augment=cfg.augmentation,
                                       seed=cfg.seed)
        if len(self.train_set) == 0:
            raise ValueError(f"{cfg.train_ann} has no images")
        if len(self.train_set) < cfg.batch_size:
            log.warning("only %d training images: batch size lowered from %d", len(self.train_set), cfg.batch_size)
            self.cfg = cfg = replace(cfg, batch_size=len(self.train_set))
        self.steps_per_epoch = len(self.train_set) // cfg.batch_size
        self.num_classes = self.train_set.num_classes
        self.class_names, self.category_ids = self.train_set.class_names, self.train_set.category_ids
        self.planned = cfg.epochs * self.steps_per_epoch if cfg.max_steps is None else int(cfg.max_steps)
        self._eval_bs = int(self.eval_batch_size or cfg.batch_size)
        self._val_count = 0
        if self.do_eval:
            from edgedet.evaluate import load_dataset

            self._val_count = len(load_dataset(cfg.val_ann)["images"])
            if self.val_limit is not None:
                self._val_count = min(self._val_count, int(self.val_limit))

    def _build_model(self) -> None:
        cfg = self.cfg
        self.model = model = create_model(cfg.variant, num_classes=self.num_classes, image_size=cfg.image_size,
                                          drop_path_rate=cfg.drop_path_rate)
        state: dict[str, Any] | None = None
        if self.resuming:
            state = load_state(self.last_path)
            check_resumable(state, cfg, self.num_classes)
            model.load_state_dict(state["state_dict"])
        elif cfg.init != "scratch":
            report = load_checkpoint(model, cfg.init, num_classes_mismatch="reinit")
            log.info("initialized from %s (%d tensors%s)", cfg.init, report["loaded"],
                     ", class head re-initialized" if report["skipped"] else "")
        elif self.resume:
            log.info("no %s yet: starting a new run", self.last_path)
        if cfg.bn_momentum is not None:
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.momentum = cfg.bn_momentum
        model.to(self.device).train()
        self.ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay else None
        self.opt = _make_optimizer(cfg.optimizer, model, cfg.lr, cfg.weight_decay, cfg.momentum)
        self.criterion = DetectionLoss(generate_anchors(model.config, cfg.image_size)).to(self.device)
        self.total_steps = self.planned
        if state is not None:
            self._restore(state)
        self.warmup_steps = warmup_steps(cfg.warmup, self.total_steps)

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue the run saved in ``state`` (``last.pt``)."""
        cfg, trainer = self.cfg, state["trainer"]
        self.step = int(trainer["step"])
        saved_cfg = trainer["train_config"]
        same_plan = (saved_cfg.get("epochs") == cfg.epochs and saved_cfg.get("max_steps") == cfg.max_steps
                     and saved_cfg.get("batch_size") == cfg.batch_size)
        self.total_steps = int(trainer["total_steps"]) if same_plan else self.planned
        self.best_metrics = trainer.get("best_metrics")
        self.last_metrics = trainer.get("last_metrics")
        self.images_seen = int(trainer.get("images_seen", 0))
        self.train_seconds_before = float(trainer.get("train_seconds", 0.0))
        self.fitted = int(trainer.get("fitted", 0)) if same_plan else 0
        if self.ema is not None and state.get("state_dict_ema") is not None:
            self.ema.load_state_dict(state["state_dict_ema"])
        if state.get("optimizer") is not None and saved_cfg.get("optimizer") == cfg.optimizer:
            self.opt.load_state_dict(state["optimizer"])
        else:
            log.warning("optimizer changed from %s to %s: its state starts afresh",
                        saved_cfg.get("optimizer"), cfg.optimizer)
        if "torch_rng" in trainer:
            torch.set_rng_state(trainer["torch_rng"])
        self.history = read_history(self.history_path)
        log.info("resuming %s at step %d/%d (epoch %.2f)", self.last_path, self.step, self.total_steps,
                 self.step / self.steps_per_epoch)

    def make_loader(self) -> DataLoader:
        """The training batches from the current step on (see :class:`BatchPlan`)."""
        workers = self.cfg.num_workers
        plan = BatchPlan(len(self.train_set), self.cfg.batch_size, self.cfg.seed, self.step, self.steps_per_epoch)
        return DataLoader(
            self.train_set, batch_sampler=plan, num_workers=workers, collate_fn=collate,
            pin_memory=self.device.type == "cuda", worker_init_fn=_worker_init if workers > 0 else None,
            prefetch_factor=4 if workers > 0 else None,
            # spawn, not fork: a forked child of a process whose OpenCV/torch thread pools are running
            # can deadlock (seen here: cv2.setNumThreads in a forked worker never returns).
            multiprocessing_context="spawn" if workers > 0 else None,
        )

    def _result(self) -> TrainResult:
        session = self.session_seconds()
        times = self.step_times
        s_per_step = float(np.median(times[1:] or times)) if times else None
        if s_per_step:
            log.info("%d steps in %.1f s this session (%.2f s/step median, %.1f images/s); stopped by %s",
                     len(times), session, s_per_step, self.cfg.batch_size / s_per_step, self.stopped_by)
        return TrainResult(
            out=self.out_dir, best_path=self.best_path if self.best_path.exists() else None,
            last_path=self.last_path, best_metrics=self.best_metrics, last_metrics=self.last_metrics,
            steps=self.step, total_steps=self.total_steps, epochs_done=self.step / self.steps_per_epoch,
            train_seconds=self.train_seconds_before + session, images_seen=self.images_seen,
            stopped_by=self.stopped_by, history=self.history, seconds_per_step=s_per_step,
            model=self.weights.eval(),
        )


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

    A convenience over ``Trainer(TrainConfig.create(...), out, ...).run()``. Under ``torchrun`` (its
    ``WORLD_SIZE`` > 1) it runs data-parallel: :class:`~edgedet.model.training.distributed.DistributedTrainer`.
    """
    from edgedet.model.training.distributed import DistributedTrainer, launched_by_torchrun

    trainer_class = DistributedTrainer if launched_by_torchrun() else Trainer
    return trainer_class(
        TrainConfig.create(
            variant, train_ann, train_images, val_ann, val_images, epochs=epochs, batch_size=batch_size,
            image_size=image_size, lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
            warmup=warmup, min_lr_ratio=min_lr_ratio, ema_decay=ema_decay, clip_grad=clip_grad, init=init,
            drop_path_rate=drop_path_rate, bn_momentum=bn_momentum, augment=augment, num_threads=num_threads,
            device=device, seed=seed, max_steps=max_steps, time_limit_minutes=time_limit_minutes,
            num_workers=num_workers),
        out, resume=resume, overwrite=overwrite, eval_every=eval_every, eval_batch_size=eval_batch_size,
        val_limit=val_limit, progress=progress,
    ).run()


# --------------------------------------------------------------------------------------- helpers

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


def _worker_init(_: int) -> None:
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def load_trained(path: str | os.PathLike[str], *, device: str = "cpu") -> EfficientDet:
    """Build the model a ``best.pth``/``last.pt`` of :func:`train` describes and load its weights."""
    meta = load_metadata(path)
    if "variant" not in meta:
        raise ValueError(f"{path} has no edgedet training metadata (variant, image_size, ...)")
    model = create_model(meta["variant"], num_classes=int(meta["num_classes"]),
                         image_size=int(meta["image_size"]))
    load_checkpoint(model, path)
    return model.to(device).eval()
