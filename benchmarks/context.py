"""Context for the table: the BiFPN fusion ablation (the machine's limits are :mod:`benchmarks.limits`).

**Fusion ablation** (paper, section 3.3: fast normalized fusion runs 1.26-1.31x faster than
softmax fusion on GPU). For each variant, the model is built three times with
``create_model(v, fusion=...)`` — ``fast_normalized``, ``softmax``, ``sum`` — at its plain
initialization (latency does not depend on weights; its activations were checked to hold no float32
denormals, which x86 computes on a slow path) and *unfolded*
(normalized weights computed from the parameters on every call, as in training and in the paper's
measurement; folding turns all three into constants). Measured under ``torch.inference_mode``:
the full model, and the BiFPN alone (``model.fpn`` on backbone features computed once). The
three fusions are timed round-robin (one call of each per round) so that load drifting on a
shared machine hits all three alike.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgedet.profiling import LatencyStats

from benchmarks.results import stats_dict

__all__ = ["FUSIONS", "PAPER_FUSION_SPEEDUP", "fusion_ablation"]

log = logging.getLogger(__name__)

FUSIONS: tuple[str, ...] = ("fast_normalized", "softmax", "sum")
#: The paper's figure: fast normalized fusion vs softmax fusion, on GPU.
PAPER_FUSION_SPEEDUP = "1.26-1.31x on GPU (EfficientDet paper, section 3.3)"


def _round_robin(calls: dict[str, Any], *, warmup: int, runs: int) -> dict[str, LatencyStats]:
    from benchmarks.measure import gc_paused

    for _ in range(warmup):
        for fn in calls.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    with gc_paused():
        for _ in range(runs):
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: LatencyStats.from_samples(s) for name, s in samples.items()}


def fusion_ablation(variants: Sequence[str], threads: int, *, runs: int = 20, warmup: int = 3,
                    image_size: int | None = None) -> dict[str, Any]:
    """PyTorch eager latency of the full model and of the BiFPN alone, per fusion and variant.

    Returns ``{"method", "threads", "runs", "paper", "variants": {v: {...}}}`` where each variant
    has ``image_size``, ``full_ms`` and ``bifpn_ms`` (fusion -> latency stats) and the speed-ups
    ``fast_vs_softmax_full`` / ``fast_vs_softmax_bifpn`` (softmax p50 / fast normalized p50; > 1
    means fast normalized is faster).
    """
    import torch

    from edgedet.model import create_model

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"method": "PyTorch eager, unfolded fusion weights, inference_mode, round-robin",
                           "threads": threads, "runs": runs, "warmup": warmup, "paper": PAPER_FUSION_SPEEDUP,
                           "variants": {}}
    try:
        for variant in variants:
            started = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                models = {f: create_model(variant, fusion=f, image_size=image_size).eval() for f in FUSIONS}
            size = models[FUSIONS[0]].image_size
            x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32))
            with torch.inference_mode():
                feats = {f: [t.clone() for t in m.backbone(x)] for f, m in models.items()}
                full = _round_robin({f: (lambda m=m: m(x)) for f, m in models.items()}, warmup=warmup, runs=runs)
                bifpn = _round_robin({f: (lambda m=m, f=f: m.fpn(feats[f])) for f, m in models.items()},
                                     warmup=warmup, runs=runs)
            entry = {"image_size": int(size),
                     "full_ms": {f: stats_dict(s) for f, s in full.items()},
                     "bifpn_ms": {f: stats_dict(s) for f, s in bifpn.items()},
                     "fast_vs_softmax_full": round(full["softmax"].p50 / full["fast_normalized"].p50, 4),
                     "fast_vs_softmax_bifpn": round(bifpn["softmax"].p50 / bifpn["fast_normalized"].p50, 4),
                     "sum_vs_fast_bifpn": round(bifpn["fast_normalized"].p50 / bifpn["sum"].p50, 4),
                     "seconds": 0.0}
            entry["seconds"] = round(time.perf_counter() - started, 1)
            out["variants"][variant] = entry
            log.info("fusion ablation %s@%d: BiFPN fast %.2f / softmax %.2f / sum %.2f ms -> fast/softmax %.3fx",
                     variant, size, bifpn["fast_normalized"].p50, bifpn["softmax"].p50, bifpn["sum"].p50,
                     entry["fast_vs_softmax_bifpn"])
            del models, feats
    finally:
        torch.set_num_threads(previous)
    return out
