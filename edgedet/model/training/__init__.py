"""Training and fine-tuning EfficientDet on COCO-format data (torch required).

Python::

    from edgedet.model.training import train
    result = train("lite0", "data/annotations/train.json", "data/train",
                   "data/annotations/val.json", "data/val", out="runs/lite0", epochs=20)
    print(result.best_map, result.best_path)

    # or, with the settings as one object (what every checkpoint records):
    config = TrainConfig.create("lite0", "data/annotations/train.json", "data/train", epochs=20)
    result = Trainer(config, "runs/lite0").run()

CLI: ``python -m edgedet.model.training --help``.

``train`` writes ``best.pth`` (EMA weights + metadata: variant, image size, class names, val
mAP...), which :func:`edgedet.model.checkpoint.load_checkpoint` and the converters read.
"""
from edgedet.model.training.dataset import Augment, CocoDetection, collate, load_coco_index
from edgedet.model.training.ema import ModelEma
from edgedet.model.training.loss import DetectionLoss, focal_loss, match_anchors
from edgedet.model.training.trainer import TrainConfig, Trainer, TrainResult, load_trained, lr_at, train

__all__ = [
    "Augment",
    "CocoDetection",
    "DetectionLoss",
    "ModelEma",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "collate",
    "focal_loss",
    "load_coco_index",
    "load_trained",
    "lr_at",
    "match_anchors",
    "train",
]
