#!/usr/bin/env python
"""Train the reference models: lite0 and d0 from scratch on the built-in synthetic shapes set.

The reference models give the project trained weights without any download: real detections for
the examples and the benchmarks' accuracy columns, and INT8 calibration that sees real activations.

    python scripts/train_reference.py                       # lite0 and d0, 45 minutes each
    python scripts/train_reference.py --variants lite0 --minutes 20
    python scripts/train_reference.py --resume              # continue interrupted runs
    python scripts/train_reference.py --smoke               # 3-minute check of the whole path

What it does, per variant (the recipe is in RECIPES below):

1. renders the synthetic set at the variant's training size (3000 train / 300 val images by
   default, seed 0), cached in ``$EDGEDET_CACHE/reference/`` (``~/.cache/edgedet/reference/``):
   never in git, reused by later runs;
2. trains from scratch with :func:`edgedet.model.training.train` (AdamW, warm-up + cosine decay fitted to
   ``--minutes``, EMA 0.999, flip + scale-jitter augmentation), evaluating COCO mAP on the val split
   after every epoch;
3. writes ``<out>/<variant>/best.pth`` (``<out>`` defaults to ``$EDGEDET_CACHE/reference``, where
   ``benchmarks/run.py`` finds it) (EMA weights + metadata: variant, image size, class names,
   val mAP), ``last.pt`` (resumable), ``history.jsonl`` and ``summary.json`` (val metrics, train
   time, steps, speed, the recipe, the data set, versions, and whether the recipe's target AP was
   reached).

Reproducible: the data (seeded renders), the initialization, the data order and augmentations
are all seeded. The number of steps depends on this machine's speed when ``--minutes`` fits the
schedule; ``--steps N`` fixes it instead (same weights on the same software and hardware).

Speed on the 2-core reference machine (STACK.md, "Training speed on this machine"): lite0 @ 320,
batch 8: ~1.7 s/step (~4.8 images/s); d0 @ 256, batch 8: ~1.0 s/step (~7.7 images/s). In 45
minutes that is ~1500 lite0 steps (~4 epochs of 3000 images) and ~2500 d0 steps (~7 epochs).
d0 trains at 256 (not its native 512: 3 s/step, too few steps in an hour; 384 would give ~1100
steps): from scratch, the number of steps is what limits accuracy.

Expected accuracy (``target_ap`` below) is an extrapolation, not a measurement: on this machine
lite0 at 128 px from scratch reached val AP 0.045 (AP50 0.089) after 620 steps (8 minutes, one
thread) and was still rising about linearly; the full runs take 2-4x more steps at larger sizes.

Run it on an otherwise idle machine. With other jobs on the cores, two torch threads can be
5-10x slower than on an idle machine (OpenMP threads spin-wait); then use ``--threads 1``, or set
``OMP_WAIT_POLICY=PASSIVE`` in the environment (measured here under load: 2 threads 5-6.6 s/step
passive vs 8-21 s/step default, 1 thread 4.5 s/step; lite0 @ 320, batch 8).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# Runnable from a checkout without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("train_reference")

#: Per-variant recipe. ``target_ap``: the val AP (COCO mAP@[.5:.95]) a full run is expected to
#: reach; summary.json records whether it did.
RECIPES: dict[str, dict] = {
    "lite0": {"image_size": 320, "batch_size": 8, "lr": 4e-3, "target_ap": 0.10},
    "d0": {"image_size": 256, "batch_size": 8, "lr": 4e-3, "target_ap": 0.10},
}
DEFAULT_TRAIN_IMAGES = 3000
DEFAULT_VAL_IMAGES = 300


def data_root() -> Path:
    from edgedet.hub import cache_dir

    return cache_dir() / "reference"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (head of this file) for details.")
    p.add_argument("--variants", default="lite0,d0", help="comma-separated, from: " + ", ".join(RECIPES))
    p.add_argument("--minutes", type=float, default=45.0, help="training time per variant (default 45)")
    p.add_argument("--steps", type=int, help="fixed step count instead of fitting the schedule to --minutes")
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default {data_root()}, where the benchmark and examples look)")
    p.add_argument("--data", type=Path, help=f"synthetic data cache (default {data_root()})")
    p.add_argument("--train-images", type=int, default=DEFAULT_TRAIN_IMAGES)
    p.add_argument("--val-images", type=int, default=DEFAULT_VAL_IMAGES)
    p.add_argument("--image-size", type=int, help="override the recipes' training size (a multiple of 32)")
    p.add_argument("--lr", type=float, help="override the recipes' peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue the runs in --out")
    p.add_argument("--overwrite", action="store_true", help="discard earlier runs in --out")
    p.add_argument("--smoke", action="store_true",
                   help="quick check of the whole path: lite0 only, at 128 px (unless --image-size), "
                        "320 train / 40 val images, 3 minutes, into <out>/smoke")
    p.add_argument("--no-progress", action="store_true")
    return p


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[1]).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def make_data(root: Path, size: int, train: int, val: int, seed: int) -> dict[str, Path]:
    from edgedet.data.synthetic import SyntheticConfig, generate_splits

    folder = root / f"shapes{size}-seed{seed}"
    started = time.monotonic()
    paths = generate_splits(folder, train=train, val=val, config=SyntheticConfig(image_size=size, seed=seed),
                            workers=max(1, os.cpu_count() or 1))
    log.info("data %s ready in %.0f s", folder, time.monotonic() - started)
    return {"folder": folder, "train_ann": paths["train"], "train_images": folder / "train",
            "val_ann": paths["val"], "val_images": folder / "val"}


def train_variant(variant: str, args: argparse.Namespace, out: Path) -> dict:
    import torch

    from edgedet.model.training import train

    recipe = dict(RECIPES[variant])
    if args.image_size:
        recipe["image_size"] = args.image_size
    if args.lr:
        recipe["lr"] = args.lr
    data = make_data(args.data or data_root(), recipe["image_size"], args.train_images, args.val_images,
                     args.seed)
    run_dir = out / variant
    result = train(
        variant, data["train_ann"], data["train_images"], data["val_ann"], data["val_images"], out=run_dir,
        epochs=1000 if args.steps is None else 1, max_steps=args.steps,
        time_limit_minutes=args.minutes, batch_size=recipe["batch_size"], image_size=recipe["image_size"],
        lr=recipe["lr"], optimizer="adamw", ema_decay=0.999, seed=args.seed, num_threads=args.threads,
        device=args.device, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
    )
    history = result.history
    per_step = result.seconds_per_step
    best = result.best_metrics or {}
    summary = {
        "variant": variant,
        "image_size": recipe["image_size"],
        "checkpoint": str(run_dir / "best.pth"),
        "val_metrics": best,
        "val_map": best.get("AP"),
        "target_ap": recipe["target_ap"],
        "target_reached": best.get("AP") is not None and best["AP"] >= recipe["target_ap"],
        "steps": result.steps,
        "schedule_steps": result.total_steps,
        "epochs": round(result.epochs_done, 3),
        "images_seen": result.images_seen,
        "train_minutes": round(result.train_seconds / 60, 2),
        "seconds_per_step": None if per_step is None else round(per_step, 3),
        "images_per_second": None if per_step is None else round(recipe["batch_size"] / per_step, 2),
        "stopped_by": result.stopped_by,
        "recipe": recipe,
        "data": {"folder": str(data["folder"]), "train_images": args.train_images,
                 "val_images": args.val_images, "seed": args.seed},
        "history": history,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "threads": args.threads or os.cpu_count(), "machine": platform.machine(),
                     "processor": platform.processor(), "git_commit": _git_commit()},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    from edgedet._atomic import atomic_write_text

    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    log.info("%s: val AP %s (target %.2f) after %d steps, %.1f min -> %s", variant,
             "n/a" if best.get("AP") is None else f"{best['AP']:.4f}", recipe["target_ap"], result.steps,
             result.train_seconds / 60, run_dir / "best.pth")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    out = args.out or data_root()
    if args.smoke:
        args.variants, args.train_images, args.val_images = "lite0", 320, 40
        args.image_size = args.image_size or 128
        args.minutes = min(args.minutes, 3.0)
        out = out / "smoke"
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in RECIPES]
    if unknown:
        print(f"error: no recipe for {unknown}; choose from {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    summaries = [train_variant(v, args, out) for v in variants]
    print(json.dumps([{k: s[k] for k in ("variant", "image_size", "val_map", "target_ap", "target_reached",
                                         "steps", "epochs", "train_minutes", "images_per_second")}
                      for s in summaries], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
