"""Checkpoints: the registry of published effdet weights, loading, checking and saving.

Checkpoints are data, never code (docs/ARCHITECTURE.md): every file is read with
``torch.load(..., weights_only=True)``, and downloads are checked against the sha256 prefix that
effdet file names carry (``tf_efficientdet_d0_34-f153e0cf.pth``). Downloads are cached in
``edgedet.hub.cache_dir() / "checkpoints"`` (``~/.cache/edgedet/checkpoints`` unless
``EDGEDET_CACHE`` says otherwise).

The model's state_dict keys are effdet's (``backbone.*``, ``fpn.*``, ``class_net.*``,
``box_net.*``), so no renaming happens here; the loader itself works for any ``nn.Module``.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from edgedet import hub
from edgedet._atomic import atomic_writer
from edgedet.config import VARIANTS, get_config

__all__ = [
    "REGISTRY",
    "CheckpointError",
    "CheckpointInfo",
    "checkpoint_path",
    "default_checkpoint",
    "load_checkpoint",
    "load_metadata",
    "load_state_dict",
    "read_checkpoint",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

#: Prefixes that training wrappers add to every key: effdet's DetBenchTrain, DataParallel/DDP.
DEFAULT_STRIP_PREFIXES: tuple[str, ...] = ("module.", "model.")
#: Container keys that hold the weights, in order of preference (EMA weights evaluate better).
_CONTAINER_KEYS: tuple[str, ...] = ("state_dict_ema", "state_dict", "model")
#: Keys of the class prediction layer: the only ones whose shape depends on the class count.
CLASS_HEAD_PREFIX = "class_net.predict."
_METADATA_KEY = "edgedet"
_SHOW = 10  # keys listed per category in error messages


class CheckpointError(ValueError):
    """A checkpoint is unreadable, is not a state_dict, or does not fit the model."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One published checkpoint: its effdet name, our variant name, where to get it."""

    name: str  # effdet's model name, e.g. "tf_efficientdet_d0"
    variant: str  # ours, a key of edgedet.config.CONFIGS, e.g. "d0"
    url: str
    sha256_prefix: str  # the hex digits in the file name
    num_classes: int = 90  # COCO, as all effdet releases

    @property
    def filename(self) -> str:
        return hub.url_filename(self.url)


_RELEASES = "https://github.com/rwightman/efficientdet-pytorch/releases/download/v0.1/"


def _published(variant: str, filename: str) -> CheckpointInfo:
    prefix = hub.hash_prefix_from_name(filename)
    assert prefix is not None, filename
    return CheckpointInfo(f"tf_efficientdet_{variant}", variant, _RELEASES + filename, prefix)


# From effdet 0.4.1 (effdet/config/model_config.py, the tf_efficientdet_* `url=` fields): the
# PyTorch port of the official TF weights. The `_ap` (AdvProp) releases are left out: they expect
# a different input normalization than config.py's variants.
REGISTRY: dict[str, CheckpointInfo] = {
    info.name: info
    for info in (
        _published("d0", "tf_efficientdet_d0_34-f153e0cf.pth"),
        _published("d1", "tf_efficientdet_d1_40-a30f94af.pth"),
        _published("d2", "tf_efficientdet_d2_43-8107aa99.pth"),
        _published("d3", "tf_efficientdet_d3_47-0b525f35.pth"),
        _published("d4", "tf_efficientdet_d4_49-f56376d9.pth"),
        _published("d5", "tf_efficientdet_d5_51-c79f9be6.pth"),
        _published("d6", "tf_efficientdet_d6_52-4eda3773.pth"),
        _published("d7", "tf_efficientdet_d7_53-6d1d7a95.pth"),
        _published("d7x", "tf_efficientdet_d7x-f390b87c.pth"),
        _published("lite0", "tf_efficientdet_lite0-dfacfc78.pth"),
        _published("lite1", "tf_efficientdet_lite1-6dc7ab30.pth"),
        _published("lite2", "tf_efficientdet_lite2-86c5d55b.pth"),
        _published("lite3", "tf_efficientdet_lite3-506852cb.pth"),
        _published("lite3x", "tf_efficientdet_lite3x-8404c57b.pth"),
        _published("lite4", "tf_efficientdet_lite4-391ddabc.pth"),
    )
}


def default_checkpoint(variant: str) -> CheckpointInfo:
    """The published COCO checkpoint of a variant: ``"d0"``, ``"lite0"``, ``"tf_efficientdet_d0"``.

    Raises ``ValueError`` for an unknown variant or one without published weights.
    """
    name = get_config(variant).name
    for info in REGISTRY.values():
        if info.variant == name:
            return info
    raise ValueError(f"no published checkpoint for variant {name!r}")


# ----------------------------------------------------------------------------------------- loading


def checkpoint_path(source: str | os.PathLike[str], *, progress: bool = True,
                    verify_name_hash: bool = True) -> Path:
    """The local file for ``source``, downloading it first if needed.

    ``source`` is tried as, in order: an existing local file; an ``http(s)://`` or ``file://``
    URL (downloaded into ``cache_dir()/"checkpoints"``, checked against the sha256 prefix in its
    file name unless ``verify_name_hash=False``); a registry name (``"tf_efficientdet_d0"``) or a
    variant name (``"d0"``), meaning its published checkpoint.

    Raises ``FileNotFoundError`` if it is none of these, ``edgedet.hub.DownloadError`` if a
    download fails.
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if urllib.parse.urlsplit(text).scheme in ("http", "https", "file"):
        return _download(text, progress=progress, verify_name_hash=verify_name_hash)
    info = _registry_lookup(text)
    if info is not None:
        return hub.download(info.url, sha256_prefix=info.sha256_prefix,
                            dest=_checkpoint_cache() / info.filename, progress=progress)
    if path.exists():
        raise CheckpointError(f"{path} is not a regular file (a directory?); pass a checkpoint")
    raise FileNotFoundError(
        f"no checkpoint file {text!r}, and it is neither an http(s)/file URL nor a known "
        f"checkpoint name ({', '.join(REGISTRY)}, or a variant: {', '.join(VARIANTS)})"
    )


def read_checkpoint(
    source: str | os.PathLike[str],
    *,
    strip_prefixes: Sequence[str] = DEFAULT_STRIP_PREFIXES,
    progress: bool = True,
    verify_name_hash: bool = True,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A checkpoint's weights and its edgedet metadata, from one read of the file.

    ``source`` is a local path, an http(s)/file URL or a registry/variant name (see
    :func:`checkpoint_path`). The file is read with ``weights_only=True``. A dict holding the
    weights under ``"state_dict_ema"``, ``"state_dict"`` or ``"model"`` (tried in that order) is
    unwrapped, and a prefix every key shares (``"module."``, ``"model."``) is removed. The
    metadata is what :func:`save_checkpoint` stored (``{}`` if none).

    Raises:
        CheckpointError: the file is not a readable checkpoint (truncated, not a torch file, or
            holding Python objects beyond tensors and plain containers), or holds no state_dict.
    """
    path = checkpoint_path(source, progress=progress, verify_name_hash=verify_name_hash)
    state_dict, metadata = _unwrap(_torch_load(path), path)
    return _strip_prefixes(state_dict, strip_prefixes), metadata


def load_state_dict(
    source: str | os.PathLike[str],
    *,
    strip_prefixes: Sequence[str] = DEFAULT_STRIP_PREFIXES,
    progress: bool = True,
    verify_name_hash: bool = True,
) -> dict[str, Tensor]:
    """Read the weights of a checkpoint as a plain ``{key: tensor}`` dict on the CPU (see
    :func:`read_checkpoint`, which also returns the metadata)."""
    return read_checkpoint(source, strip_prefixes=strip_prefixes, progress=progress,
                           verify_name_hash=verify_name_hash)[0]


def load_metadata(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata :func:`save_checkpoint` stored with a checkpoint (``{}`` if none)."""
    return read_checkpoint(source)[1]


def load_checkpoint(
    model: torch.nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Tensor],
    *,
    num_classes_mismatch: Literal["error", "reinit"] = "error",
    strict: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` after checking that it fits.

    ``source`` is anything :func:`load_state_dict` accepts, or a loaded checkpoint dict
    (unwrapped and prefix-stripped the same way). Keys and shapes are compared with
    ``model.state_dict()`` first, so nothing is copied unless the whole checkpoint fits:

    * missing keys and unexpected keys are errors when ``strict`` (the default), else warnings;
      ``num_batches_tracked`` buffers are never required;
    * a shape mismatch is always an error, except for the class prediction layer
      (``class_net.predict.*``, whose shape follows the class count): with
      ``num_classes_mismatch="reinit"`` those keys are skipped and the model keeps its freshly
      initialized class head (fine-tune it), with a warning.

    Returns a report: ``{"source", "loaded", "skipped", "missing", "unexpected"}`` (counts
    and key lists). Raises :class:`CheckpointError` listing the offending keys.
    """
    if num_classes_mismatch not in ("error", "reinit"):
        raise ValueError(f"num_classes_mismatch must be 'error' or 'reinit', "
                         f"got {num_classes_mismatch!r}")
    if isinstance(source, Mapping):
        label = "<state_dict>"
        checkpoint = _strip_prefixes(_unwrap(source, Path(label))[0], DEFAULT_STRIP_PREFIXES)
    else:
        label, checkpoint = os.fspath(source), load_state_dict(source)
    target = model.state_dict()
    plan = _compare(checkpoint, target)
    class_head = [k for k in plan.mismatched if k.startswith(CLASS_HEAD_PREFIX)]
    other_mismatched = [k for k in plan.mismatched if not k.startswith(CLASS_HEAD_PREFIX)]
    skip_class_head = num_classes_mismatch == "reinit" and bool(class_head)

    problems = []
    if strict and plan.missing:
        problems.append(_listing("missing from the checkpoint", plan.missing))
    if strict and plan.unexpected:
        problems.append(_listing("in the checkpoint but not in the model", plan.unexpected))
    mismatched = other_mismatched if skip_class_head else plan.mismatched
    if mismatched:
        problems.append(_listing("with different shapes (checkpoint vs model)",
                                 [_shapes(k, checkpoint, target) for k in mismatched]))
    if problems:
        raise CheckpointError(_fit_message(
            label, model, problems, class_head=bool(class_head) and not skip_class_head,
            keys_differ=strict and bool(plan.missing or plan.unexpected),
            other_shapes=bool(other_mismatched)))

    if not strict and (plan.missing or plan.unexpected):
        logger.warning("loading %s non-strictly: %d keys missing (kept as initialized), %d "
                       "unexpected (ignored)", label, len(plan.missing), len(plan.unexpected))
    skipped = class_head if skip_class_head else []
    if skipped:
        logger.warning("%s: class head shape differs from the model's (%s); keeping the model's "
                       "freshly initialized class head: fine-tune before use", label,
                       _shapes(skipped[-1], checkpoint, target))
    skip = set(skipped)
    to_load = {k: v for k, v in checkpoint.items() if k in target and k not in skip}
    model.load_state_dict(to_load, strict=False)
    logger.info("loaded %d tensors from %s", len(to_load), label)
    return {
        "source": label,
        "loaded": len(to_load),
        "skipped": list(skipped),
        "missing": list(plan.missing),
        "unexpected": list(plan.unexpected),
    }


# ------------------------------------------------------------------------------------------ saving


def save_checkpoint(
    model_or_state_dict: torch.nn.Module | Mapping[str, Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save weights atomically in the format :func:`load_state_dict` reads; return the path.

    Without ``metadata`` the file is a plain state_dict (as effdet's releases); with it,
    ``{"state_dict": ..., "edgedet": metadata}``. ``metadata`` may hold only ``None``, bools,
    numbers, strings, lists/tuples, str-keyed dicts and tensors, so that ``weights_only`` loading
    reads it back (``TypeError`` otherwise). Tensors are saved on the CPU.
    """
    if isinstance(model_or_state_dict, torch.nn.Module):
        state_dict = model_or_state_dict.state_dict()
    else:
        state_dict = dict(model_or_state_dict)
    _require_tensors(state_dict, what="state_dict")
    # clone: a state_dict tensor may view a larger storage, which torch.save would write whole
    weights = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    payload: Any = weights
    if metadata is not None:
        payload = {"state_dict": weights, _METADATA_KEY: _plain_copy(metadata, "metadata")}
    path = Path(path)
    with atomic_writer(path, "wb") as f:
        torch.save(payload, f)
    return path


# ---------------------------------------------------------------------------------------- internals


@dataclass(frozen=True)
class _Comparison:
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]


def _compare(checkpoint: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> _Comparison:
    # num_batches_tracked only counts BN updates; inference never reads it, and the TF ports
    # (and models with track_running_stats off) lack it.
    def optional(key: str) -> bool:
        return key.endswith("num_batches_tracked")

    missing = [k for k in target if k not in checkpoint and not optional(k)]
    unexpected = [k for k in checkpoint if k not in target and not optional(k)]
    mismatched = [k for k in target
                  if k in checkpoint and tuple(checkpoint[k].shape) != tuple(target[k].shape)]
    return _Comparison(missing, unexpected, mismatched)


def _listing(what: str, keys: Sequence[str]) -> str:
    shown = "\n    ".join(keys[:_SHOW])
    more = f"\n    ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    noun = "key" if len(keys) == 1 else "keys"
    return f"  {len(keys)} {noun} {what}:\n    {shown}{more}"


def _shapes(key: str, checkpoint: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> str:
    return f"{key}: {tuple(checkpoint[key].shape)} vs {tuple(target[key].shape)}"


def _fit_message(label: str, model: torch.nn.Module, problems: list[str], *, class_head: bool,
                 keys_differ: bool, other_shapes: bool) -> str:
    lines = [f"checkpoint {label} does not fit {type(model).__name__}:", *problems]
    if class_head:
        lines.append(
            "The class head (class_net.predict.*) has another shape: the checkpoint was trained "
            "for a different number of classes. Build the model with the checkpoint's "
            "num_classes, or pass num_classes_mismatch='reinit' to keep the model's freshly "
            "initialized class head and fine-tune it."
        )
    if keys_differ or other_shapes:
        hint = " (or pass strict=False to tolerate missing and unexpected keys)" * keys_differ
        lines.append("Is it a checkpoint of this variant? Build the model for the variant the "
                     f"checkpoint was trained as{hint}.")
    return "\n".join(lines)


def _registry_lookup(name: str) -> CheckpointInfo | None:
    if name in REGISTRY:
        return REGISTRY[name]
    try:
        return default_checkpoint(name)
    except ValueError:
        return None


def _checkpoint_cache() -> Path:
    return hub.cache_dir() / "checkpoints"


def _download(url: str, *, progress: bool, verify_name_hash: bool) -> Path:
    name = hub.url_filename(url)
    prefix = hub.hash_prefix_from_name(name) if verify_name_hash else None
    folder = _checkpoint_cache()
    if prefix is None:
        # No hash to tell two same-named files apart: key the cache entry by the URL instead.
        folder = folder / hashlib.sha256(url.encode()).hexdigest()[:16]
    return hub.download(url, sha256_prefix=prefix, dest=folder / name, progress=progress)


def _torch_load(path: Path) -> Any:
    try:
        # timm/effdet training checkpoints store their argparse.Namespace under "args"; a
        # Namespace only holds attributes, and what is inside still goes through the allowlist.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _weights_only_detail(exc)
        if "global" in detail.lower():  # a class or function reference: code, not data
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain containers, so it "
                f"was refused: edgedet never runs code from a checkpoint (weights_only=True). "
                f"If you trust the file, load it yourself and re-save just its weights "
                f"(torch.save(model.state_dict(), 'weights.pth')), then load that. ({detail})"
            ) from exc
        raise CheckpointError(_unreadable(path, detail)) from exc
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, ImportError,
            IndexError, KeyError, TypeError) as exc:
        raise CheckpointError(_unreadable(path, f"{type(exc).__name__}: {exc}")) from exc


def _weights_only_detail(exc: BaseException) -> str:
    """The informative line of torch's long weights_only error (the rest is boilerplate)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line:
            return line
    return lines[0] if lines else type(exc).__name__


def _unreadable(path: Path, detail: str) -> str:
    size = path.stat().st_size if path.exists() else 0
    return (f"{path} ({size} bytes) is not a readable PyTorch checkpoint: it may be truncated by "
            f"an interrupted download or copy, or not a torch.save file at all. Delete it and "
            f"download or export it again. ({detail})")


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state_dict and edgedet metadata inside a loaded checkpoint object."""
    metadata: dict[str, Any] = {}
    for _ in range(3):  # containers nest at most a couple of levels in practice
        if not isinstance(obj, Mapping):
            break
        if isinstance(obj.get(_METADATA_KEY), Mapping):
            metadata = dict(obj[_METADATA_KEY])
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds no state_dict (found {_describe(obj)}); expected a "
                              f"dict of tensors, possibly under 'state_dict' or 'state_dict_ema'")
    try:
        _require_tensors(obj, what="state_dict")
    except TypeError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return dict(obj), metadata


def _require_tensors(state_dict: Mapping[Any, Any], *, what: str) -> None:
    bad = [f"{k!r} ({type(v).__name__})" for k, v in state_dict.items()
           if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"not a {what}: {len(bad)} entries are not str -> tensor, e.g. "
                        f"{', '.join(bad[:_SHOW])}")


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"a dict with keys {list(obj)[:_SHOW]}" if obj else "an empty dict"
    return f"a {type(obj).__name__}"


def _strip_prefixes(state_dict: dict[str, Tensor], prefixes: Sequence[str]) -> dict[str, Tensor]:
    # Only a prefix that *every* key shares is a wrapper's: stripping it from some keys would
    # corrupt a model that happens to have a submodule of that name.
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def _plain_copy(value: Any, where: str) -> Any:
    """A copy of ``value`` made only of types ``weights_only`` loading accepts, else TypeError.

    Subclasses are converted to their base type (numpy's float64 is a float, but would be pickled
    as a numpy object that weights_only loading refuses).
    """
    if value is None or isinstance(value, Tensor):
        return value
    for base in (bool, int, float, str):  # bool first: it is an int
        if isinstance(value, base):
            return base(value)
    if isinstance(value, (list, tuple)):
        items = [_plain_copy(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be str, got {key!r}")
            out[str(key)] = _plain_copy(item, f"{where}[{key!r}]")
        return out
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoint metadata may hold only "
                    f"None, bool, int, float, str, list, tuple, dict and tensors")
