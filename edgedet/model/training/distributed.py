"""Data-parallel training under ``torchrun`` (DDP): ``torchrun --nproc_per_node N -m edgedet.model.training ...``.

Each of the N processes (ranks) trains a replica on its share of every batch; ``DistributedDataParallel``
averages the gradients, so the replicas take the same optimizer step and stay equal. Backend: NCCL on
GPUs, gloo on CPUs. What the run writes — evaluation, history, ``best.pth``, ``last.pt``, logging and
the progress bar — happens on rank 0 only; every decision that changes the schedule (fitting it to a
time limit, stopping) is rank 0's and is broadcast, so the ranks never disagree on the step count.
The batch size stays the *global* one: each rank takes ``batch_size / N`` images of each batch, so a
run's schedule and data order are those of a one-process run with the same settings.

Batch normalization normalizes each rank's share of the batch (as a one-process run with a smaller
batch would); its running statistics are rank 0's, which DDP broadcasts at every forward and rank 0
saves. With tiny per-rank batches prefer more images per step.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from edgedet.model.training.schedule import BatchPlan
from edgedet.model.training.trainer import Trainer, TrainResult

__all__ = ["DistributedTrainer", "is_main_process", "launched_by_torchrun"]

log = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Whether this process reports for the run: rank 0 of a ``torchrun`` job, or a plain process."""
    return int(os.environ.get("RANK", "0")) == 0


class _RankShare:
    """The part of each global batch that one rank trains on (rank r takes every N-th image from r)."""

    def __init__(self, plan: BatchPlan, rank: int, world: int) -> None:
        self.plan, self.rank, self.world = plan, rank, world

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.plan:
            yield batch[self.rank::self.world]


class DistributedTrainer(Trainer):
    """A :class:`Trainer` that is one rank of a ``torchrun`` job (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0
        if self.cfg.batch_size < self.world:
            raise ValueError(f"batch size {self.cfg.batch_size} is smaller than the {self.world} processes: "
                             "each needs at least one image per step")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        if not self.is_main:  # only rank 0 reports; the others warn and fail
            logging.getLogger("edgedet").setLevel(logging.WARNING)

    def run(self) -> TrainResult:
        if self.cfg.num_threads is None:  # the ranks of one machine share its cores
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
            self.cfg = replace(self.cfg, num_threads=max(1, (os.cpu_count() or 1) // local))
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        log.info("rank %d of %d (%s backend), batch %d per step, %d per rank", self.rank, self.world, backend,
                 self.cfg.batch_size, -(-self.cfg.batch_size // self.world))
        try:
            result = super().run()
            self._check_in_step()
            return result
        finally:
            dist.destroy_process_group()

    # ---- what differs from one process -------------------------------------------------------

    def _build_model(self) -> None:
        super()._build_model()
        # DDP broadcasts rank 0's parameters and buffers, so every replica starts from the same weights.
        self.ddp = DistributedDataParallel(self.model, device_ids=[self.local_rank] if self.device.type == "cuda"
                                           else None)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ddp(images)

    def all_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.tensor([float(torch.isfinite(loss))], device=self.device)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # one rank's bad step is every rank's
        return bool(finite.item())

    def make_loader(self) -> DataLoader:
        loader = super().make_loader()
        share = _RankShare(loader.batch_sampler, self.rank, self.world)
        return DataLoader(self.train_set, batch_sampler=share, num_workers=loader.num_workers,
                          collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                          worker_init_fn=loader.worker_init_fn, prefetch_factor=loader.prefetch_factor,
                          multiprocessing_context=loader.multiprocessing_context)

    def _after_step(self) -> bool:
        final = super()._after_step()
        # Rank 0 decides (its evaluation timed the schedule); the others follow.
        decision = torch.tensor([int(final), self.total_steps, self.warmup_steps, self.fitted], device=self.device)
        dist.broadcast(decision, src=0)
        final, self.total_steps, self.warmup_steps, self.fitted = (bool(decision[0]), *map(int, decision[1:].tolist()))
        return final

    def evaluate(self) -> dict[str, float] | None:
        return super().evaluate() if self.is_main else None

    def record(self, metrics: dict[str, float] | None, losses: dict[str, float]) -> None:
        if self.is_main:
            super().record(metrics, losses)

    def save_last(self) -> None:
        if self.is_main:
            super().save_last()

    def _prepare_output(self) -> None:
        if self.is_main:
            super()._prepare_output()
        dist.barrier()  # the others read the folder (resume) only once rank 0 has set it up
        if not self.is_main:
            self.resuming = self.resume and self.last_path.exists() and not self.overwrite

    def _check_in_step(self) -> None:
        """Every rank must end with rank 0's weights; say so, or fail loudly if they diverged. (The
        parameters: batch-norm running statistics are each rank's own until DDP's next forward
        broadcasts rank 0's, and the checkpoint is rank 0's.)"""
        digest = hashlib.sha256()
        for _, tensor in sorted(self.model.named_parameters()):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        mine = torch.tensor(list(digest.digest()[:8]), dtype=torch.int64, device=self.device)
        everyone = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(everyone, mine)
        if any(not torch.equal(t, everyone[0]) for t in everyone):
            raise RuntimeError("the ranks' weights diverged: the data-parallel run is not in step")
        log.info("ranks in step: identical weights on all %d ranks after %d steps (sha256 %s)", self.world,
                 self.step, bytes(everyone[0].cpu().tolist()).hex())
