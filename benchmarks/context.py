"""Context for the table: this machine's float32 GEMM peak, and the BiFPN fusion ablation.

**GEMM peak.** Square float32 matrix products (1024 and 2048 by default), best repeat, at the
benchmark's thread count, with two libraries: ``torch.matmul`` (MKL; threads set at run time with
``torch.set_num_threads``) and ``numpy.matmul`` (OpenBLAS; its threads read from environment
variables at import, so they are pinned with ``threadpoolctl`` — skipped where that is missing).
The peak is the better of the two: one library alone can understate a CPU (MKL does not pick its
best kernels on every vendor's CPUs; OpenBLAS lags on others). Each FP32 row's *share of peak* is
``2 × MACs / model-only p50 / peak``. EfficientDet's depthwise convolutions and element-wise work
are memory-bound, so well below 100% is normal; a runtime that fuses batch norm and activations
into its convolutions and keeps a blocked layout gets much closer than PyTorch eager. The figure
says how much of the machine a runtime's kernels use, not how good the model is.

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

__all__ = ["FUSIONS", "PAPER_FUSION_SPEEDUP", "fusion_ablation", "gemm_peak", "merge_gemm"]

log = logging.getLogger(__name__)

FUSIONS: tuple[str, ...] = ("fast_normalized", "softmax", "sum")
#: The paper's figure: fast normalized fusion vs softmax fusion, on GPU.
PAPER_FUSION_SPEEDUP = "1.26-1.31x on GPU (EfficientDet paper, section 3.3)"


def _best_gflops(matmul: Any, n: int, repeats: int, min_seconds: float) -> float:
    """Best-repeat GFLOP/s of ``matmul()`` (one n×n×n float32 product per call)."""
    matmul()  # warm-up: threads up, pages touched
    best, count, spent = float("inf"), 0, 0.0
    while count < 200 and (count < repeats or spent < min_seconds):
        t0 = time.perf_counter()
        matmul()
        dt = time.perf_counter() - t0
        best, count, spent = min(best, dt), count + 1, spent + dt
    return round(2.0 * n ** 3 / best / 1e9, 2)


def _numpy_threads(threads: int) -> Any:
    """A context limiting numpy's BLAS to ``threads`` (threadpoolctl), or None if it cannot."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=threads, user_api="blas")


def gemm_peak(threads: int, sizes: Sequence[int] = (1024, 2048), repeats: int = 5,
              min_seconds: float = 1.0) -> dict[str, Any]:
    """Best float32 GEMM throughput (GFLOP/s, 2·n³ per n×n product) at ``threads`` threads.

    Measured with ``torch.matmul`` (``torch.set_num_threads``) and, where ``threadpoolctl`` can
    pin its BLAS threads, ``numpy.matmul``; the peak is the best of both. Each size is repeated at
    least ``repeats`` times and for at least ``min_seconds`` (at most 200 times); the best repeat
    counts, as the least disturbed one on a shared machine.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    by_library: dict[str, dict[str, float]] = {"torch": {}}
    started = time.perf_counter()
    try:
        rng = np.random.default_rng(0)
        for n in sizes:
            a = rng.random((n, n), dtype=np.float32)
            b = rng.random((n, n), dtype=np.float32)
            out = np.empty((n, n), dtype=np.float32)
            ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
            by_library["torch"][str(n)] = _best_gflops(lambda: torch.matmul(ta, tb, out=tout), n, repeats,
                                                       min_seconds)
            limits = _numpy_threads(threads)
            if limits is not None:
                with limits:
                    by_library.setdefault("numpy", {})[str(n)] = _best_gflops(
                        lambda: np.matmul(a, b, out=out), n, repeats, min_seconds)
    finally:
        torch.set_num_threads(previous)
    best = {str(n): max(lib[str(n)] for lib in by_library.values() if str(n) in lib) for n in sizes}
    peak = max(best.values())
    log.info("GEMM peak: %.1f GFLOP/s (%s threads; %s)", peak, threads, by_library)
    return {"method": "float32 matmul, best repeat, best of " + " and ".join(
                {"torch": "torch.matmul (torch.set_num_threads)",
                 "numpy": "numpy.matmul (BLAS threads pinned with threadpoolctl)"}[k] for k in by_library),
            "threads": threads, "sizes": list(sizes), "repeats": repeats, "min_seconds": min_seconds,
            "gflops_by_size": best, "by_library": by_library, "peak_gflops": peak,
            "torch": torch.__version__, "numpy": np.__version__,
            "seconds": round(time.perf_counter() - started, 2)}


def merge_gemm(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two :func:`gemm_peak` measurements (before and after the matrix) as one: the best of each.

    On a shared machine one measurement can land in a busy moment; the better one is nearer the
    machine's real peak. ``passes`` keeps both peaks.
    """
    by_library = {lib: {n: max(v, second.get("by_library", {}).get(lib, {}).get(n, 0.0))
                        for n, v in sizes.items()} for lib, sizes in first["by_library"].items()}
    best = {n: max(v, second["gflops_by_size"].get(n, 0.0)) for n, v in first["gflops_by_size"].items()}
    return {**first, "by_library": by_library, "gflops_by_size": best, "peak_gflops": max(best.values()),
            "passes": [first["peak_gflops"], second["peak_gflops"]],
            "seconds": round(first["seconds"] + second["seconds"], 2)}


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
