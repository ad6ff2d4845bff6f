"""edgedet.model.checkpoint: registry, loading (paths, URLs, names, containers), fit checks, saving.

No network but a local HTTP server on 127.0.0.1 (from test_hub).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from edgedet import hub
from edgedet.config import VARIANTS
from edgedet.model import checkpoint as ckpt
from edgedet.model.checkpoint import CheckpointError, CheckpointInfo
from test_hub import Server


class Head(nn.Module):
    def __init__(self, channels: int, outputs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.predict = nn.Conv2d(channels, outputs, 1)


class Toy(nn.Module):
    """Named like EfficientDet (backbone / class_net.predict / box_net) at a tiny size."""

    def __init__(self, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width))
        self.class_net = Head(width, 9 * num_classes)
        self.box_net = Head(width, 9 * 4)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path / "cache"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def toy_state(tmp_path):
    torch.manual_seed(0)
    return Toy().state_dict()


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def hashed_name(path: Path, stem: str = "something_x") -> Path:
    """Rename ``path`` to effdet's ``<stem>-<first 8 hex of sha256>.pth``."""
    named = path.with_name(f"{stem}-{hub.sha256_file(path)[:8]}.pth")
    path.rename(named)
    return named


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------- registry


def test_registry_covers_every_variant():
    assert {info.variant for info in ckpt.REGISTRY.values()} == set(VARIANTS)
    for name, info in ckpt.REGISTRY.items():
        assert name == info.name == f"tf_efficientdet_{info.variant}"
        assert info.filename.endswith(f"-{info.sha256_prefix}.pth")
        assert len(info.sha256_prefix) == 8 and info.num_classes == 90


def test_registry_urls_match_effdet():
    from effdet_ref import import_effdet

    import_effdet()
    from effdet.config.model_config import get_efficientdet_config

    for name, info in ckpt.REGISTRY.items():
        assert get_efficientdet_config(name).url == info.url, name


def test_default_checkpoint():
    assert ckpt.default_checkpoint("d0").name == "tf_efficientdet_d0"
    assert ckpt.default_checkpoint("tf_efficientdet_lite3x").variant == "lite3x"
    assert ckpt.default_checkpoint("LITE0").sha256_prefix == "dfacfc78"
    with pytest.raises(ValueError, match="unknown"):
        ckpt.default_checkpoint("d9")


# --------------------------------------------------------------------------------- load_state_dict


def test_load_state_dict_local_path(tmp_path, toy_state):
    path = save(toy_state, tmp_path / "toy.pth")
    assert_same(ckpt.load_state_dict(path), toy_state)
    assert_same(ckpt.load_state_dict(str(path)), toy_state)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "epoch": 3, "arch": "x"},
    lambda sd: {"state_dict_ema": sd, "state_dict": {k: v + 1 for k, v in sd.items()}},
    lambda sd: {"model": sd},
    lambda sd: {f"model.{k}": v for k, v in sd.items()},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
    lambda sd: {"state_dict": {f"module.model.{k}": v for k, v in sd.items()}},
    # a timm/effdet training checkpoint: argparse args and optimizer state beside the weights
    lambda sd: {"state_dict": sd, "args": argparse.Namespace(lr=0.1, model="x"),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "metric": 0.3},
], ids=["state_dict", "ema_preferred", "model", "model_prefix", "module_prefix", "nested",
        "timm_train"])
def test_load_state_dict_unwraps_containers(tmp_path, toy_state, wrap):
    path = save(wrap(toy_state), tmp_path / "wrapped.pth")
    assert_same(ckpt.load_state_dict(path), toy_state)


def test_partial_prefix_is_kept(tmp_path):
    # only a prefix shared by *all* keys is a wrapper's
    state = {"model.w": torch.ones(1), "head.b": torch.zeros(1)}
    loaded = ckpt.load_state_dict(save(state, tmp_path / "p.pth"))
    assert list(loaded) == ["model.w", "head.b"]


def test_load_state_dict_http_url_caches_and_verifies_name_hash(tmp_path, toy_state):
    served = tmp_path / "served"
    served.mkdir()
    name = hashed_name(save(toy_state, served / "toy.pth")).name
    server = Server(served)
    try:
        loaded = ckpt.load_state_dict(server.url(name))
        assert_same(loaded, toy_state)
        assert (tmp_path / "cache" / "checkpoints" / name).is_file()
        assert_same(ckpt.load_state_dict(server.url(name)), toy_state)
        assert len(server.requests) == 1  # second load came from the cache

        (served / "bad-00000000.pth").write_bytes((served / name).read_bytes())
        with pytest.raises(hub.DownloadError, match="sha256 mismatch"):
            ckpt.load_state_dict(server.url("bad-00000000.pth"))
        assert not list((tmp_path / "cache" / "checkpoints").glob("bad-*"))
    finally:
        server.close()


def test_load_state_dict_file_url_without_hash_in_name(tmp_path, toy_state):
    path = save(toy_state, tmp_path / "plain.pth")
    loaded = ckpt.load_state_dict(path.as_uri())
    assert_same(loaded, toy_state)
    # no hash in the name: cached under a per-URL folder so same-named files can't collide
    cached = list((tmp_path / "cache" / "checkpoints").glob("*/plain.pth"))
    assert len(cached) == 1


def test_load_state_dict_registry_name(tmp_path, toy_state, monkeypatch):
    path = hashed_name(save(toy_state, tmp_path / "t.pth"), "tf_efficientdet_toy")
    info = CheckpointInfo("tf_efficientdet_toy", "d0", path.as_uri(),
                          hub.hash_prefix_from_name(path.name))
    monkeypatch.setitem(ckpt.REGISTRY, info.name, info)
    assert_same(ckpt.load_state_dict("tf_efficientdet_toy"), toy_state)
    assert (tmp_path / "cache" / "checkpoints" / path.name).is_file()


def test_unknown_source():
    with pytest.raises(FileNotFoundError, match="known checkpoint name"):
        ckpt.load_state_dict("no/such/file.pth")


def test_truncated_checkpoint(tmp_path, toy_state):
    path = save(toy_state, tmp_path / "full.pth")
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        ckpt.load_state_dict(cut)
    assert "cut.pth" in str(info.value)


@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"PK\x03\x04garbage"],
                         ids=["empty", "random", "fake_zip"])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        ckpt.load_state_dict(path)


class Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickle_with_code_is_refused_and_not_run(tmp_path, toy_state):
    marker = tmp_path / "pwned"
    path = save({"state_dict": toy_state, "extra": Evil(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only") as info:
        ckpt.load_state_dict(path)
    assert "evil.pth" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("obj, message", [
    ([torch.ones(1)], "no state_dict"),
    ({}, "no state_dict"),
    ({"w": torch.ones(1), "step": 3}, "not str -> tensor"),
])
def test_not_a_state_dict(tmp_path, obj, message):
    with pytest.raises(CheckpointError, match=message):
        ckpt.load_state_dict(save(obj, tmp_path / "odd.pth"))


# --------------------------------------------------------------------------------- load_checkpoint


def test_load_checkpoint_exact(tmp_path):
    torch.manual_seed(1)
    source = Toy()
    path = save(source.state_dict(), tmp_path / "toy.pth")
    torch.manual_seed(2)
    model = Toy()
    report = ckpt.load_checkpoint(model, path)
    assert_same(model.state_dict(), source.state_dict())
    assert report["loaded"] == len(source.state_dict())
    assert report["skipped"] == report["missing"] == report["unexpected"] == []


def test_load_checkpoint_accepts_a_state_dict():
    source, model = Toy(), Toy()
    ckpt.load_checkpoint(model, source.state_dict())
    assert_same(model.state_dict(), source.state_dict())
    other = Toy().state_dict()
    ckpt.load_checkpoint(model, {"state_dict": {f"module.{k}": v for k, v in other.items()}})
    assert_same(model.state_dict(), other)


def test_num_batches_tracked_may_be_missing():
    source, model = Toy(), Toy()
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    report = ckpt.load_checkpoint(model, state)
    assert report["missing"] == []
    assert torch.equal(model.backbone[1].running_mean, source.backbone[1].running_mean)


def test_missing_keys_are_named():
    state = Toy().state_dict()
    del state["box_net.predict.weight"], state["backbone.0.bias"]
    model = Toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        ckpt.load_checkpoint(model, state)
    text = str(info.value)
    assert "2 keys missing" in text
    assert "box_net.predict.weight" in text and "backbone.0.bias" in text
    assert_same(model.state_dict(), before)  # nothing copied on failure


def test_unexpected_keys_are_named_and_listing_is_capped():
    state = Toy().state_dict()
    state.update({f"extra.layer{i}.weight": torch.zeros(1) for i in range(15)})
    with pytest.raises(CheckpointError) as info:
        ckpt.load_checkpoint(Toy(), state)
    text = str(info.value)
    assert "15 keys in the checkpoint but not in the model" in text
    assert "extra.layer0.weight" in text and "... and 5 more" in text
    assert "extra.layer14.weight" not in text


def test_strict_false_tolerates_missing_and_unexpected(caplog):
    source = Toy()
    state = source.state_dict()
    del state["box_net.predict.bias"]
    state["extra.w"] = torch.zeros(1)
    model = Toy()
    with caplog.at_level(logging.WARNING, logger="edgedet.model.checkpoint"):
        report = ckpt.load_checkpoint(model, state, strict=False)
    assert report["missing"] == ["box_net.predict.bias"] and report["unexpected"] == ["extra.w"]
    assert torch.equal(model.box_net.predict.weight, source.box_net.predict.weight)
    assert "non-strictly" in caplog.text


def test_shape_mismatch_is_named():
    state = Toy(width=4).state_dict()
    with pytest.raises(CheckpointError, match="different shapes") as info:
        ckpt.load_checkpoint(Toy(width=8), state)
    assert "backbone.0.weight: (4, 3, 3, 3) vs (8, 3, 3, 3)" in str(info.value)
    # a width change is not a class-count change: reinit does not excuse it
    with pytest.raises(CheckpointError, match="different shapes"):
        ckpt.load_checkpoint(Toy(width=8), state, num_classes_mismatch="reinit", strict=False)


def test_class_head_mismatch_error_suggests_reinit():
    state = Toy(num_classes=90).state_dict()
    with pytest.raises(CheckpointError, match="num_classes_mismatch='reinit'") as info:
        ckpt.load_checkpoint(Toy(num_classes=3), state)
    assert "class_net.predict.weight: (810, 4, 1, 1) vs (27, 4, 1, 1)" in str(info.value)


def test_class_head_reinit_keeps_fresh_head(caplog):
    source = Toy(num_classes=90)
    model = Toy(num_classes=3)
    fresh_head = {k: v.clone() for k, v in model.class_net.predict.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="edgedet.model.checkpoint"):
        report = ckpt.load_checkpoint(model, source.state_dict(), num_classes_mismatch="reinit")
    assert sorted(report["skipped"]) == ["class_net.predict.bias", "class_net.predict.weight"]
    assert_same(model.class_net.predict.state_dict(), fresh_head)
    assert torch.equal(model.class_net.conv.weight, source.class_net.conv.weight)
    assert torch.equal(model.box_net.predict.weight, source.box_net.predict.weight)
    assert "class head" in caplog.text


def test_bad_mismatch_option():
    with pytest.raises(ValueError):
        ckpt.load_checkpoint(Toy(), Toy().state_dict(), num_classes_mismatch="ignore")


# --------------------------------------------------------------------------------- save_checkpoint


def test_save_plain_roundtrip(tmp_path):
    model = Toy()
    path = ckpt.save_checkpoint(model, tmp_path / "out" / "toy.pth")
    raw = torch.load(path, weights_only=True)
    assert_same(raw, model.state_dict())  # a plain state_dict, as effdet's releases
    assert ckpt.load_metadata(path) == {}
    assert sorted(p.name for p in path.parent.iterdir()) == ["toy.pth"]


def test_save_with_metadata_roundtrip(tmp_path):
    import numpy as np

    model = Toy()
    meta = {"variant": "d0", "num_classes": 3, "labels": ["a", "b", "c"], "mean": (0.5, 0.5),
            "score": np.float64(0.25), "nested": {"ok": True, "none": None}}
    path = ckpt.save_checkpoint(model.state_dict(), tmp_path / "toy.pth", metadata=meta)
    assert_same(ckpt.load_state_dict(path), model.state_dict())
    loaded = ckpt.load_metadata(path)
    assert loaded == {**meta, "score": 0.25} and type(loaded["score"]) is float
    restored = Toy()
    ckpt.load_checkpoint(restored, path)
    assert_same(restored.state_dict(), model.state_dict())


def test_save_rejects_non_plain_metadata(tmp_path):
    with pytest.raises(TypeError, match="metadata"):
        ckpt.save_checkpoint(Toy(), tmp_path / "x.pth", metadata={"path": Path("/tmp")})
    with pytest.raises(TypeError, match="keys must be str"):
        ckpt.save_checkpoint(Toy(), tmp_path / "x.pth", metadata={1: "a"})
    assert not (tmp_path / "x.pth").exists()


def test_save_failure_leaves_old_file(tmp_path, monkeypatch):
    path = ckpt.save_checkpoint(Toy(), tmp_path / "toy.pth")
    before = hashlib.sha256(path.read_bytes()).hexdigest()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(Toy(), path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert [p.name for p in tmp_path.iterdir()] == ["toy.pth"]


# ------------------------------------------------------------------------------------- real effdet


def test_effdet_lite0_state_dict_roundtrip(tmp_path):
    from effdet_ref import import_effdet

    effdet = import_effdet()
    torch.manual_seed(0)
    m = effdet.create_model("tf_efficientdet_lite0", pretrained=False, pretrained_backbone=False)
    sd = m.state_dict()
    files = {
        "plain": save(sd, tmp_path / "plain.pth"),
        "ema": save({"state_dict_ema": sd}, tmp_path / "ema.pth"),
        "bench": save({f"model.{k}": v for k, v in sd.items()}, tmp_path / "bench.pth"),
    }
    for kind, path in files.items():
        loaded = ckpt.load_state_dict(path)
        assert list(loaded) == list(sd), kind
        assert all(torch.equal(loaded[k], sd[k]) for k in sd), kind

    # into a fresh effdet model: everything loads; a 20-class model needs reinit
    torch.manual_seed(1)
    other = effdet.create_model("tf_efficientdet_lite0", pretrained=False,
                                pretrained_backbone=False)
    ckpt.load_checkpoint(other, files["bench"])
    assert all(torch.equal(v, sd[k]) for k, v in other.state_dict().items())

    small = effdet.create_model("tf_efficientdet_lite0", pretrained=False,
                                pretrained_backbone=False, num_classes=20)
    with pytest.raises(CheckpointError, match="reinit"):
        ckpt.load_checkpoint(small, files["plain"])
    report = ckpt.load_checkpoint(small, files["plain"], num_classes_mismatch="reinit")
    assert sorted(report["skipped"]) == ["class_net.predict.conv_pw.bias",
                                         "class_net.predict.conv_pw.weight"]
    assert report["loaded"] == len(sd) - 2


def test_effdet_checkpoint_loads_into_edgedet_model(tmp_path):
    """A checkpoint in the effdet format (here: made by effdet itself) loads into our model by
    create_model(checkpoint=...), and another class count needs an explicit reinit."""
    from effdet_ref import import_effdet

    from edgedet.model import create_model
    from edgedet.model.checkpoint import CheckpointError, load_checkpoint

    effdet = import_effdet()
    reference = effdet.create_model("tf_efficientdet_lite0", pretrained=False, pretrained_backbone=False)
    path = tmp_path / "tf_efficientdet_lite0_custom.pth"
    torch.save(reference.state_dict(), path)

    model = create_model("lite0", checkpoint=str(path))
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    other = create_model("lite0", num_classes=5)
    with pytest.raises(CheckpointError, match="reinit"):
        load_checkpoint(other, path)
    report = load_checkpoint(other, path, num_classes_mismatch="reinit")
    assert sorted(report["skipped"]) == ["class_net.predict.conv_pw.bias", "class_net.predict.conv_pw.weight"]
    assert torch.equal(other.state_dict()["box_net.predict.conv_pw.weight"],
                       reference.state_dict()["box_net.predict.conv_pw.weight"])
