"""Command line: ``python -m edgedet.model.training VARIANT --train-ann ... --out DIR`` (see ``--help``)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from edgedet.config import VARIANTS

EPILOG = """\
examples:
  # fine-tune the published COCO lite0 on your data (class head re-initialized)
  edgedet-train lite0 --train-ann data/annotations/train.json --train-images data/train \\
      --val-ann data/annotations/val.json --val-images data/val --init tf_efficientdet_lite0 \\
      --epochs 20 --out runs/lite0

  # train d0 from scratch at 256 px on the built-in synthetic shapes, 40 minutes
  edgedet-train d0 --synthetic data/shapes256 --image-size 256 --time-limit 40 --out runs/d0

  # continue an interrupted or time-limited run
  edgedet-train d0 --synthetic data/shapes256 --image-size 256 --out runs/d0 --resume

outputs (in --out): best.pth (EMA weights of the best val AP, with metadata: variant, image size,
class names, val mAP; load with edgedet.model.checkpoint.load_checkpoint, convert with
edgedet-convert --weights runs/lite0/best.pth), last.pt (resumable state), history.jsonl.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgedet-train",
        description="Train or fine-tune an EfficientDet on COCO-format data; the validation mAP of the "
                    "EMA weights is measured every epoch with the runtime's own pre/post-processing.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variant", help=f"model variant: {', '.join(VARIANTS)}")
    data = p.add_argument_group("data (COCO json + image folder, or --synthetic)")
    data.add_argument("--train-ann", type=Path, help="training annotations (COCO json)")
    data.add_argument("--train-images", type=Path, help="folder the training file_names are relative to")
    data.add_argument("--val-ann", type=Path, help="validation annotations (COCO json)")
    data.add_argument("--val-images", type=Path, help="validation image folder")
    data.add_argument("--synthetic", type=Path, metavar="DIR",
                      help="generate (or reuse) the built-in synthetic shapes set in DIR, rendered at the "
                           "training size, and train on it")
    data.add_argument("--synthetic-train", type=int, default=2000, metavar="N",
                      help="synthetic training images (default 2000)")
    data.add_argument("--synthetic-val", type=int, default=200, metavar="N",
                      help="synthetic validation images (default 200)")
    data.add_argument("--val-limit", type=int, metavar="N", help="evaluate on the first N validation images")

    opt = p.add_argument_group("training")
    opt.add_argument("--out", type=Path, required=True, help="output folder (best.pth, last.pt, history.jsonl)")
    opt.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    opt.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    opt.add_argument("--image-size", type=int,
                     help="input side, a multiple of 32 (default: the variant's native size)")
    opt.add_argument("--lr", type=float, help="peak learning rate (default 2e-3 AdamW, 0.02 SGD)")
    opt.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    opt.add_argument("--weight-decay", type=float, help="default 0.01 (AdamW), 4e-5 (SGD)")
    opt.add_argument("--warmup", type=float, default=0.05,
                     help="warm-up: steps if >= 1, else a fraction of the schedule (default 0.05)")
    opt.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay, 0 disables (default 0.999)")
    opt.add_argument("--init", default="scratch",
                     help="'scratch', or a checkpoint: path, URL, or a published name such as "
                          "tf_efficientdet_lite0 (class head re-initialized if the class count differs)")
    opt.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate (default 0)")
    opt.add_argument("--bn-momentum", type=float,
                     help="batch-norm momentum while training (default 0.1 from scratch, the model's "
                          "0.01 when fine-tuning)")
    opt.add_argument("--no-augment", action="store_true", help="no flip / scale jitter")
    opt.add_argument("--seed", type=int, default=0)

    run = p.add_argument_group("run")
    run.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    run.add_argument("--overwrite", action="store_true", help="discard an earlier run in OUT")
    run.add_argument("--time-limit", type=float, metavar="MIN",
                     help="stop within MIN minutes (the LR schedule is fitted to it unless --max-steps)")
    run.add_argument("--max-steps", type=int, help="stop after this many steps (the schedule's length)")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    run.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    run.add_argument("--workers", type=int, default=1, help="data-loading processes (default 1)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _synthetic(directory: Path, size: int, train: int, val: int) -> tuple[Path, Path, Path, Path]:
    from edgedet.data.synthetic import SyntheticConfig, generate_splits

    paths = generate_splits(directory, train=train, val=val, config=SyntheticConfig(image_size=size),
                            workers=2)
    return paths["train"], directory / "train", paths["val"], directory / "val"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("edgedet.model.training")
    from edgedet.config import get_config

    try:
        config = get_config(args.variant)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = args.image_size or config.image_size
    if args.synthetic is not None:
        if args.train_ann or args.train_images:
            print("error: give --synthetic or --train-ann/--train-images, not both", file=sys.stderr)
            return 2
        train_ann, train_images, val_ann, val_images = _synthetic(args.synthetic, size, args.synthetic_train,
                                                                  args.synthetic_val)
    else:
        if not (args.train_ann and args.train_images):
            print("error: give --train-ann and --train-images (or --synthetic DIR)", file=sys.stderr)
            return 2
        train_ann, train_images, val_ann, val_images = (args.train_ann, args.train_images, args.val_ann,
                                                        args.val_images)

    from edgedet.model.training.dataset import Augment
    from edgedet.model.training.trainer import train

    try:
        result = train(
            config.name, train_ann, train_images, val_ann, val_images, out=args.out, epochs=args.epochs,
            batch_size=args.batch_size, image_size=args.image_size, lr=args.lr, optimizer=args.optimizer,
            weight_decay=args.weight_decay, warmup=args.warmup, ema_decay=args.ema_decay, init=args.init,
            drop_path_rate=args.drop_path, bn_momentum=args.bn_momentum,
            augment=Augment.none() if args.no_augment else Augment(),
            num_threads=args.threads, device=args.device, seed=args.seed, resume=args.resume,
            overwrite=args.overwrite, max_steps=args.max_steps, time_limit_minutes=args.time_limit,
            num_workers=args.workers, val_limit=args.val_limit, progress=not args.no_progress)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    summary = {
        "best": str(result.best_path) if result.best_path else None,
        "best_metrics": result.best_metrics,
        "steps": result.steps, "epochs": round(result.epochs_done, 3),
        "train_minutes": round(result.train_seconds / 60, 2), "stopped_by": result.stopped_by,
    }
    from edgedet.model.training.distributed import is_main_process

    if is_main_process():  # under torchrun, one summary for the run
        log.info("done: %s", json.dumps(summary))
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
