"""The files of a training run in its output folder: names, the resumable state, the history.

``last.pt`` holds ``state_dict``, ``state_dict_ema`` (if an EMA is kept), ``optimizer``,
``edgedet`` (the checkpoint metadata) and ``trainer`` (a block of format :data:`STATE_VERSION`:
step, schedule length, metrics, counters, the run's config and the torch RNG).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edgedet._atomic import atomic_writer

if TYPE_CHECKING:
    from edgedet.model.training.config import TrainConfig

__all__ = ["BEST_NAME", "HISTORY_NAME", "LAST_NAME", "STATE_VERSION", "append_history", "atomic_torch_save",
           "check_resumable", "load_state", "plain", "read_history"]

BEST_NAME = "best.pth"
LAST_NAME = "last.pt"
HISTORY_NAME = "history.jsonl"
#: Format of ``last.pt``'s ``trainer`` block; bump on incompatible changes.
STATE_VERSION = 1


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` that never leaves a half-written file under ``path``."""
    with atomic_writer(path, "wb") as f:
        torch.save(obj, f)


def plain(value: Any) -> Any:
    """``value`` as JSON types (tuples become lists...), as a JSON round trip leaves it."""
    return json.loads(json.dumps(value))


def load_state(path: Path) -> dict[str, Any]:
    """The training state in ``path`` (``last.pt``), checked for its format."""
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


def check_resumable(state: Mapping[str, Any], cfg: TrainConfig, num_classes: int) -> None:
    """:class:`ValueError` unless ``state`` is a run of the same model as ``cfg`` describes."""
    saved = state["trainer"]["train_config"]
    for key in ("variant", "image_size"):
        if saved.get(key) != getattr(cfg, key):
            raise ValueError(f"cannot resume: the saved run has {key}={saved.get(key)!r}, this one "
                             f"{getattr(cfg, key)!r} (use another output folder)")
    meta = state.get("edgedet", {})
    if meta.get("num_classes") not in (None, num_classes):
        raise ValueError(f"cannot resume: the saved run has {meta.get('num_classes')} classes, the "
                         f"training split {num_classes}")


def read_history(path: Path) -> list[dict[str, Any]]:
    """The entries of ``history.jsonl`` (unreadable lines, e.g. one cut by a crash, skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def append_history(path: Path, entry: Mapping[str, Any]) -> None:
    """Add one line to ``history.jsonl``."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
