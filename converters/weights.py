"""Where a model's weights come from: a checkpoint (path, URL, registry name) or a random init.

``--weights random`` gives a *realistic* random network rather than the plain initialization:
a freshly initialized EfficientDet has batch-norm statistics at their defaults (so activations
drift in scale layer after layer) and heads initialized at N(0, 0.01) (so box regressions are
~1e-17 and class logits all equal the prior bias). Parity figures measured on that are
meaningless: any artifact "matches" to 1e-6. :func:`realistic_random_` therefore

1. draws variance-preserving conv weights, N(0, 1/fan_in) with groups counted. The training
   init leaves activations far below the batch norms' eps (1e-3) in places, where BN cannot
   renormalize them: TF's N(0, 0.01) heads shrink activations ~400x per separable conv (the
   outputs would hardly depend on the image), and kaiming on depthwise convs (torch's fan ignores
   groups) gives weights ~30x too small;
2. draws batch-norm affine parameters, γ = exp(N(-0.3, 0.3)) (median 0.74), β ~ N(2, 0.2), so
   channels differ in scale and offset as in a trained network;
3. sets every batch norm's running statistics to the statistics of the activations it actually
   sees on 8 synthetic scenes, as training leaves them (random statistics, e.g. var ~ U(0.5, 1.5),
   were tried: through D0's 16 residual blocks they compound into activations of std ~1000);
4. rescales the heads' prediction layers so that, on those scenes, class logits have std 2
   and box regressions std 0.5, and shifts the class bias so that about
   :data:`CANDIDATES_PER_IMAGE` scores per image pass the runtime's score threshold, as with a
   trained detector (so decode + NMS cost what they cost in deployment),

all from one seed, deterministically.

Why β around 2: a deep random network is either *chaotic* (tiny input differences grow layer
after layer: with β ~ N(0, 0.2), noise of 1e-3 on the input changed Lite0's logits by 6 standard
deviations, FP32 reassociation alone gave 1.6e-3 and FP16 was unusable) or *ordered* (outputs
forget the image). Trained networks are neither. β around 2 keeps ReLU6/swish units in their
near-linear range: the same 1e-3 noise moves the logits by 0.03 std, while 10-20% of the
outputs' spread still comes from the image (measured on Lite0 and D0). Even so, a random network
stays more sensitive to quantization than a trained one (INT8 box cosine 0.993 on random D0 vs
0.9998 on the published weights, docs/TOOLCHAIN.md): parity thresholds for random weights are looser
(:data:`converters.verify.RANDOM_WEIGHT_THRESHOLDS`).

Latency is a property of architecture, not weights (docs/ARCHITECTURE.md), so such artifacts are fine for
profiling; the manifest says ``random: true``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgedet.data.coco import COCO90_LABELS
from edgedet.hub import sha256_file

if TYPE_CHECKING:
    from edgedet.model import EfficientDet

__all__ = ["RANDOM", "PUBLISHED", "ResolvedWeights", "WeightsError", "realistic_random_", "resolve_weights"]

RANDOM = "random"
PUBLISHED = "published"
#: Bump when realistic_random_ changes the weights it makes (part of the export key).
#: The key also names the synthetic scenes the statistics are fitted on (calibration.SYNTHETIC_KEY).
RANDOM_RECIPE_VERSION = 3  # 2: class prior shifted to CANDIDATES_PER_IMAGE; 3: edgedet.data.synthetic scenes
#: Scores above the runtime's threshold per image that realistic random weights give (on the
#: scenes they are fitted on). A trained detector has tens to a few hundred on a busy scene (the
#: reference Lite0 and D0: 14-220); the focal-loss prior alone let ~3% of all pairs through
#: (50k-150k per image), and NMS on those made post-processing 11-37% of the benchmark's
#: end-to-end latency, against 0.4-2% for trained weights.
CANDIDATES_PER_IMAGE = 100


class WeightsError(ValueError):
    """Weights that cannot be used: random without permission, unreadable or unfitting checkpoints."""


@dataclass(frozen=True)
class ResolvedWeights:
    """Weights for one variant, resolved to something loadable before any export starts."""

    source: str  # what the manifest records: "random:seed=0", a path, a URL or a registry name
    random: bool
    path: Path | None = None  # the local checkpoint file
    sha256: str | None = None  # of the checkpoint file
    seed: int = 0
    num_classes: int | None = None  # from the checkpoint's class head
    #: What an edgedet training run recorded with the checkpoint (None for plain state_dicts).
    trained_image_size: int | None = None
    class_names: tuple[str, ...] | None = None

    @property
    def key(self) -> str:
        """What identifies these weights in an export key."""
        if self.random:
            from converters.calibration import SYNTHETIC_KEY

            return f"random-v{RANDOM_RECIPE_VERSION}-{SYNTHETIC_KEY}:seed={self.seed}"
        return f"sha256:{self.sha256}"


def resolve_weights(spec: str, variant: str, *, allow_random: bool, seed: int = 0,
                    progress: bool = True) -> ResolvedWeights:
    """Resolve ``spec`` (``random``, ``published``, a path, URL or registry name) for ``variant``.

    A checkpoint is fetched if needed, hashed and read (``weights_only=True``) here, so that an
    unreadable file fails before any export; its class count is read from the class head.
    """
    if spec == RANDOM:
        if not allow_random:
            raise WeightsError(
                "--weights random makes artifacts that detect nothing; they are useful only for "
                "latency profiling and pipeline tests. Pass --allow-random (allow_random=True) to "
                "confirm; the manifests will record random: true.")
        return ResolvedWeights(source=f"random:seed={seed}", random=True, seed=seed)

    from edgedet.model import checkpoint as ckpt  # torch: lazily

    source = variant if spec == PUBLISHED else spec
    try:
        path = ckpt.checkpoint_path(source, progress=progress)
        state, meta = ckpt.read_checkpoint(path)
    except (ckpt.CheckpointError, FileNotFoundError, OSError) as exc:
        raise WeightsError(f"weights {spec!r} for {variant}: {exc}") from exc
    except Exception as exc:  # DownloadError and friends: same message shape
        raise WeightsError(f"weights {spec!r} for {variant}: {type(exc).__name__}: {exc}") from exc
    num_classes = _num_classes(state, variant)
    if meta.get("variant") and meta["variant"] != variant:
        raise WeightsError(f"weights {spec!r} hold a {meta['variant']} model, not {variant}; pass "
                           f"--variants {meta['variant']}")
    size = meta.get("image_size")
    names = meta.get("class_names")
    if names is not None and (num_classes is None or len(names) != num_classes):
        names = None  # metadata that disagrees with the weights is not trusted
    if names is None and num_classes == len(COCO90_LABELS) and (spec == PUBLISHED or spec in ckpt.REGISTRY):
        names = COCO90_LABELS  # a published COCO checkpoint: output k is COCO category id k + 1
    recorded = ckpt.default_checkpoint(variant).url if spec == PUBLISHED else os.fspath(spec)
    return ResolvedWeights(source=recorded, random=False, path=Path(path), sha256=sha256_file(path),
                           num_classes=num_classes, trained_image_size=int(size) if size else None,
                           class_names=tuple(str(n) for n in names) if names else None)


def _num_classes(state: dict, variant: str) -> int | None:
    from edgedet.config import get_config

    weight = state.get("class_net.predict.conv_pw.weight")
    if weight is None:
        return None
    per_cell = get_config(variant).anchors.anchors_per_cell
    rows = int(weight.shape[0])
    return rows // per_cell if rows % per_cell == 0 else None


#: Realistic random weights already made in this process (deterministic, so safe to reuse): a
#: rerun of convert() in the same process skips the batch-norm statistics pass.
_RANDOM_STATES: dict[tuple, dict] = {}


def build_model(variant: str, num_classes: int, weights: ResolvedWeights,
                image_size: int | None = None) -> "EfficientDet":
    """The eval-mode model of ``variant`` with ``weights`` loaded, fusion weights folded, built for
    ``image_size`` inputs (default: the variant's native size)."""
    import torch

    from edgedet.model import create_model
    from edgedet.model.checkpoint import CheckpointError, load_checkpoint

    if weights.random:
        key = (variant, num_classes, weights.seed, RANDOM_RECIPE_VERSION, image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(weights.seed)
            model = create_model(variant, num_classes, image_size=image_size)
        if key in _RANDOM_STATES:
            model.load_state_dict(_RANDOM_STATES[key])
        else:
            realistic_random_(model, seed=weights.seed)
            _RANDOM_STATES[key] = {k: v.clone() for k, v in model.state_dict().items()}
            while len(_RANDOM_STATES) > 4:
                _RANDOM_STATES.pop(next(iter(_RANDOM_STATES)))
    else:
        model = create_model(variant, num_classes, image_size=image_size)
        try:
            load_checkpoint(model, weights.path)
        except CheckpointError as exc:
            raise WeightsError(str(exc)) from exc
    return model.eval().fold_fusion_weights()


def realistic_random_(model: "EfficientDet", seed: int = 0, *, images: int = 8,
                      image_size: int | None = None) -> "EfficientDet":
    """Give a randomly initialized model trained-like batch-norm statistics and head scales.

    See the module docstring. In place; returns ``model`` (in eval mode). Deterministic for a
    seed; leaves the global torch RNG untouched.
    """
    import torch
    from torch import nn

    from converters.calibration import synthetic_frame
    from edgedet.preprocess import preprocess

    config = model.config
    size = image_size or config.image_size
    norm = config.normalization
    frames = [synthetic_frame(10_000 + seed, i) for i in range(images)]
    batch, _ = preprocess(frames, size, norm.mean, norm.std)
    x = torch.from_numpy(batch)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        # Variance-preserving conv weights everywhere, std 1/sqrt(fan_in) with groups counted.
        # The training init leaves activations far below the batch norms' eps (1e-3) in places,
        # where BN cannot renormalize them: TF's N(0, 0.01) heads shrink activations ~400x per
        # separable conv (the outputs would hardly depend on the image), and kaiming on
        # depthwise convs (torch's fan ignores groups) gives weights ~30x too small.
        for conv in model.modules():
            if isinstance(conv, nn.Conv2d):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / fan_in ** 0.5)
        for bn in bns:
            bn.weight.copy_(torch.exp(torch.randn(bn.weight.shape, generator=gen) * 0.3 - 0.3))
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.2 + 2.0)

        # Running statistics = the statistics each BN sees (cumulative average over the batch).
        momenta = [bn.momentum for bn in bns]
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        model(x)
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()

        # Head output scales: logits std 2 around the prior bias, regressions std 0.5.
        cls, box = model(x)
        _rescale_predict(model.class_net, cls, target_std=2.0)
        _rescale_predict(model.box_net, box, target_std=0.5)
        _shift_class_prior(model.class_net, model(x)[0], CANDIDATES_PER_IMAGE)
    return model


def _rescale_predict(head, output, target_std: float) -> None:
    std = float(output.std())
    if not np.isfinite(std) or std <= 0:
        return
    pw = head.predict.conv_pw
    pw.weight.mul_(target_std / std)


def _shift_class_prior(head, cls_logits, per_image: int) -> None:
    """Shift the class bias so that ``per_image`` scores per image pass the runtime's threshold."""
    from edgedet.postprocess import DEFAULT_SCORE_THRESHOLD, score_to_logit

    flat = cls_logits.reshape(-1)
    k = min(flat.numel(), per_image * cls_logits.shape[0])
    kth = float(flat.topk(k).values[-1])
    head.predict.conv_pw.bias.add_(score_to_logit(DEFAULT_SCORE_THRESHOLD) - kth)
