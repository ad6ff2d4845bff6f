"""Data-parallel training under torchrun: two CPU processes (gloo) train a few steps in step, and only
rank 0 writes. The rendezvous runs in a loopback-only network namespace (tests/netns.py)."""
from __future__ import annotations

import json
import os
import shlex
import sys

import pytest
import torch

from netns import run_loopback_only

STEPS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from edgedet.data.synthetic import SyntheticConfig, generate_coco

    root = tmp_path_factory.mktemp("ddp")
    ann = generate_coco(root / "coco", num_images=8, config=SyntheticConfig(image_size=128, seed=3),
                        split_name="train", progress=False)
    return ann, root / "coco" / "train"


def _torchrun(ann, images, out, *extra: str):
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "edgedet.model.training", "lite0", "--train-ann", str(ann), "--train-images", str(images),
            "--image-size", "128", "--batch-size", "4", "--max-steps", str(STEPS), "--out", str(out),
            "--workers", "0", "--no-progress", *extra]
    return run_loopback_only(" ".join(shlex.quote(a) for a in argv), timeout=900,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_ranks_stay_in_step_and_rank_0_alone_writes(data, tmp_path):
    ann, images = data
    out = tmp_path / "run"
    result = _torchrun(ann, images, out)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    log = result.stdout + result.stderr
    # The trainer compares every rank's weights after the steps (all_gather of a hash) and fails on a mismatch.
    assert f"ranks in step: identical weights on all 2 ranks after {STEPS} steps" in log
    assert "rank 0 of 2 (gloo backend), batch 4 per step, 2 per rank" in log
    assert sorted(p.name for p in out.iterdir()) == ["best.pth", "history.jsonl", "last.pt"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    # One writer: one record per evaluation point (the epoch end at step 2 of 8 images / 4, and the end),
    # not one per rank.
    assert [h["step"] for h in history] == [2, STEPS]
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["step"] == STEPS and state["trainer"]["images_seen"] == 4 * STEPS
    assert log.count('\n  "steps": 3,') == 1  # the printed summary: rank 0's only


def test_a_batch_smaller_than_the_ranks_is_refused(data, tmp_path):
    ann, images = data
    result = _torchrun(ann, images, tmp_path / "run", "--batch-size", "1")
    assert result.returncode != 0
    assert "error: batch size 1 is smaller than the 2 processes" in result.stderr
