"""This machine's limits, measured honestly: the FP32 and INT8 matrix-product peaks and memory bandwidth.

A row's *share of peak* means something only against the best the machine can do. One library alone
understates a CPU: here numpy's OpenBLAS is held to its AVX2 kernels by ``OPENBLAS_CORETYPE`` while the
CPU has AVX-512, so a numpy-only "peak" let an OpenVINO row reach an impossible 114%. So each peak is
the best of every kernel within reach, *chosen by the runtimes themselves* (no BLAS environment
variable is touched):

* **FP32**: one n×n×n MatMul through OpenVINO (``INFERENCE_PRECISION_HINT=f32``), onnxruntime,
  ``torch.matmul`` and ``numpy.matmul`` (BLAS threads pinned with threadpoolctl).
* **INT8**: a u8×s8 product with int32 accumulation through onnxruntime (``MatMulInteger``) and
  OpenVINO (a FakeQuantize'd MatMul, which its CPU plug-in runs as a u8 FullyConnected: VNNI where the
  CPU has it). Counted in OPS, 2 per multiply-accumulate, like the rows' INT8 GOPS.
* **Memory bandwidth**: copy and add (``a = b + c``) of arrays far larger than the caches, in numpy
  (one thread) and OpenVINO (``threads``); bytes read plus written per second. Depthwise
  convolutions, EfficientDet's most frequent layer, are bound by this rather than by the peaks.

Each measurement is the best repeat at the benchmark's thread count (the least disturbed on a shared
machine). Beside them, *theoretical* peaks from the CPU's vector features and the clock the OS reports
(two FMA pipes of the widest vector, every thread a full core). That clock is often the nominal one
(always on a virtual machine), and boost clocks run higher, so a measured peak may exceed it: the
theory says what the vector units can do per cycle, the measurement what this machine delivers.
A row above 100% of a measured peak means a probe missed the best kernel: the benchmark reports it
as a problem, never as a result.
"""
from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["measure_limits", "merge_limits", "peak_for", "share_problems", "theoretical_peaks"]

log = logging.getLogger(__name__)

#: A kernel to time: (name, factory(n, threads) -> a call doing one n×n×n product). A factory raises
#: ImportError / RuntimeError where its library is missing or refuses; that kernel is then left out.
Kernel = tuple[str, Callable[[int, int], Callable[[], Any]]]


def _best_rate(call: Callable[[], Any], work: float, repeats: int, min_seconds: float) -> float:
    """Best-repeat ``work / seconds`` of ``call()`` (after one warm-up call), in G-units per second."""
    call()
    best, count, spent = float("inf"), 0, 0.0
    while count < 200 and (count < repeats or spent < min_seconds):
        t0 = time.perf_counter()
        call()
        dt = time.perf_counter() - t0
        best, count, spent = min(best, dt), count + 1, spent + dt
    return round(work / best / 1e9, 2)


def _operands(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)


# ------------------------------------------------------------------------------------ FP32 kernels


def _openvino_fp32(n: int, threads: int) -> Callable[[], Any]:
    import openvino as ov
    import openvino.opset13 as ops

    a, b = ops.parameter([n, n], np.float32), ops.parameter([n, n], np.float32)
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(a, b, False, False)], [a, b]), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    request, (x, y) = compiled.create_infer_request(), _operands(n)
    return lambda: request.infer({0: x, 1: y}, share_inputs=True)


def _onnxruntime_session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _onnx_model(nodes: list, inputs: list, outputs: list, initializers: Sequence = ()) -> Any:
    from onnx import helper

    graph = helper.make_graph(nodes, "probe", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _onnxruntime_fp32(n: int, threads: int) -> Callable[[], Any]:
    from onnx import TensorProto, helper

    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n])  # noqa: E731
    model = _onnx_model([helper.make_node("MatMul", ["a", "b"], ["c"])], [value("a"), value("b")], [value("c")])
    session, (x, y) = _onnxruntime_session(model, threads), _operands(n)
    return lambda: session.run(None, {"a": x, "b": y})


def _torch_fp32(n: int, threads: int) -> Callable[[], Any]:
    import torch

    torch.set_num_threads(threads)
    x, y = (torch.from_numpy(m) for m in _operands(n))
    out = torch.empty((n, n))
    return lambda: torch.matmul(x, y, out=out)


def _numpy_fp32(n: int, threads: int) -> Callable[[], Any]:
    from threadpoolctl import threadpool_limits

    x, y = _operands(n)
    out = np.empty((n, n), np.float32)

    def call() -> None:
        with threadpool_limits(limits=threads, user_api="blas"):
            np.matmul(x, y, out=out)

    return call


# ------------------------------------------------------------------------------------ INT8 kernels


def _int8_operands(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, n), dtype=np.uint8), rng.integers(-128, 128, (n, n), dtype=np.int8)


def _onnxruntime_int8(n: int, threads: int) -> Callable[[], Any]:
    from onnx import TensorProto, helper, numpy_helper

    x, w = _int8_operands(n)
    model = _onnx_model([helper.make_node("MatMulInteger", ["a", "w"], ["c"])],
                        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])],
                        [numpy_helper.from_array(w, "w")])
    session = _onnxruntime_session(model, threads)
    return lambda: session.run(None, {"a": x})


def _openvino_int8(n: int, threads: int) -> Callable[[], Any]:
    import openvino as ov
    import openvino.opset13 as ops

    def const(v: float) -> Any:
        return ops.constant(np.float32(v))

    _, w = _int8_operands(n)
    a = ops.parameter([n, n], np.float32)
    quantized = ops.fake_quantize(a, const(0), const(1), const(0), const(1), 256)  # u8 activations
    weights = ops.multiply(ops.convert(ops.constant(w), np.float32), const(1 / 127))  # s8 weights
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(quantized, weights, False, False)], [a]), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    kinds = {str(op.get_rt_info()["runtimePrecision"].astype(str)) for op in compiled.get_runtime_model().get_ordered_ops()
             if "runtimePrecision" in op.get_rt_info() and op.get_rt_info()["layerType"].astype(str)
             in ("FullyConnected", "MatMul")}
    if not kinds & {"u8", "i8"}:  # the plug-in fell back to float: not an INT8 kernel
        raise RuntimeError(f"OpenVINO ran the quantized MatMul in {sorted(kinds)}, not int8")
    request, x = compiled.create_infer_request(), _operands(n)[0]
    return lambda: request.infer({0: x}, share_inputs=True)


FP32_KERNELS: tuple[Kernel, ...] = (("openvino", _openvino_fp32), ("onnxruntime", _onnxruntime_fp32),
                                    ("torch", _torch_fp32), ("numpy", _numpy_fp32))
INT8_KERNELS: tuple[Kernel, ...] = (("onnxruntime MatMulInteger", _onnxruntime_int8),
                                    ("openvino u8 FullyConnected", _openvino_int8))


def _peak(kernels: Sequence[Kernel], threads: int, sizes: Sequence[int], repeats: int,
          min_seconds: float) -> dict[str, Any] | None:
    """The best G(FL)OP/s of each kernel over ``sizes``, and the winner; None if no kernel ran."""
    by_kernel: dict[str, dict[str, float]] = {}
    unavailable: dict[str, str] = {}
    for name, factory in kernels:
        for n in sizes:
            try:
                call = factory(n, threads)
            except Exception as exc:  # noqa: BLE001 - a missing library or a refused kernel: left out, said
                unavailable[name] = f"{type(exc).__name__}: {str(exc)[:160]}"
                break
            by_kernel.setdefault(name, {})[str(n)] = _best_rate(call, 2.0 * n ** 3, repeats, min_seconds)
    if not by_kernel:
        return None
    winner = max(by_kernel, key=lambda k: max(by_kernel[k].values()))
    return {"peak": max(by_kernel[winner].values()), "winner": winner, "by_kernel": by_kernel,
            "unavailable": unavailable}


# ------------------------------------------------------------------------------------ memory


def _bandwidth(threads: int, mib: int, repeats: int, min_seconds: float) -> dict[str, Any]:
    """Copy and add bandwidth (GB/s of bytes read + written) in numpy and OpenVINO; the best of each."""
    count = mib * 2 ** 20 // 4
    b, c = np.ones(count, np.float32), np.full(count, 2.0, np.float32)
    a = np.empty_like(b)
    size = b.nbytes
    probes = {"numpy copy (1 thread)": (lambda: np.copyto(a, b), 2 * size),
              "numpy add a=b+c (1 thread)": (lambda: np.add(b, c, out=a), 3 * size)}
    try:
        import openvino as ov
        import openvino.opset13 as ops

        x, y = ops.parameter([count], np.float32), ops.parameter([count], np.float32)
        compiled = ov.Core().compile_model(ov.Model([ops.add(x, y)], [x, y]), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
        request = compiled.create_infer_request()
        request.infer({0: b, 1: c}, share_inputs=True)
        probes[f"openvino add a=b+c ({threads} threads)"] = (
            lambda: request.infer({0: b, 1: c}, share_inputs=True, share_outputs=True), 3 * size)
    except Exception as exc:  # noqa: BLE001 - numpy's figure still stands
        log.info("OpenVINO bandwidth probe unavailable: %s", exc)
    by_kernel = {name: _best_rate(call, work, repeats, min_seconds) for name, (call, work) in probes.items()}
    winner = max(by_kernel, key=by_kernel.get)
    return {"peak_gbps": by_kernel[winner], "winner": winner, "by_kernel": by_kernel, "mib": mib}


# ------------------------------------------------------------------------------------ theory


def _cpu_flags_and_mhz(cpuinfo: str) -> tuple[set[str], float | None]:
    flags: set[str] = set()
    mhz: list[float] = []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags |= set(value.split())
        elif key == "cpu mhz":
            try:
                mhz.append(float(value))
            except ValueError:
                pass
    return flags, (max(mhz) if mhz else None)


def theoretical_peaks(threads: int, cpuinfo: str | None = None, machine: str | None = None) -> dict[str, Any]:
    """Upper bounds from the CPU's vector features and reported clock, or ``None`` figures where
    they cannot be read. FP32: FLOP per cycle per core = 2 FMA pipes × lanes × 2; INT8: OPS per cycle
    with the CPU's dot-product instructions (VNNI on x86, SDOT on Arm), else about twice FP32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    machine = machine or platform.machine()
    flags, mhz = _cpu_flags_and_mhz(cpuinfo)
    if "avx512f" in flags:
        fp32, isa = 64, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        fp32, isa = 32, "AVX2+FMA"
    elif machine in ("aarch64", "arm64") or "asimd" in flags:
        fp32, isa = 16, "NEON"
    elif flags:
        fp32, isa = 8, "SSE"
    else:
        fp32, isa = None, None
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        int8, int8_isa = 256, "AVX-512 VNNI"
    elif "avx_vnni" in flags:
        int8, int8_isa = 128, "AVX-VNNI"
    elif "asimddp" in flags:
        int8, int8_isa = 64, "Arm SDOT"
    else:
        int8, int8_isa = (2 * fp32 if fp32 else None), "no dot-product instruction (about 2x FP32)"
    ghz = mhz / 1000 if mhz else None
    per_second = (lambda per_cycle: None if per_cycle is None or ghz is None
                  else round(per_cycle * ghz * threads, 1))
    return {"isa": isa, "int8_isa": int8_isa, "clock_ghz": None if ghz is None else round(ghz, 3),
            "threads": threads, "fp32_flop_per_cycle_core": fp32, "int8_op_per_cycle_core": int8,
            "fp32_gflops": per_second(fp32), "int8_gops": per_second(int8)}


# ------------------------------------------------------------------------------------ all together


def measure_limits(threads: int, sizes: Sequence[int] = (1024, 2048), *, repeats: int = 5,
                   min_seconds: float = 1.0, bandwidth_mib: int = 256) -> dict[str, Any]:
    """FP32 and INT8 peaks (best kernel over ``sizes``), memory bandwidth and the theoretical peaks."""
    started = time.perf_counter()
    import torch

    previous = torch.get_num_threads()  # the torch probe sets it process-wide: put it back
    try:
        fp32 = _peak(FP32_KERNELS, threads, sizes, repeats, min_seconds)
        int8 = _peak(INT8_KERNELS, threads, sizes, repeats, min_seconds)
        memory = _bandwidth(threads, bandwidth_mib, max(3, repeats // 2), min_seconds / 2)
    finally:
        torch.set_num_threads(previous)
    result = {"threads": threads, "sizes": list(sizes), "repeats": repeats, "min_seconds": min_seconds,
              "fp32": fp32, "int8": int8, "memory": memory, "theoretical": theoretical_peaks(threads),
              "seconds": round(time.perf_counter() - started, 2)}
    log.info("limits: FP32 %s GFLOP/s (%s), INT8 %s GOPS (%s), memory %s GB/s (%s)",
             fp32 and fp32["peak"], fp32 and fp32["winner"], int8 and int8["peak"], int8 and int8["winner"],
             memory["peak_gbps"], memory["winner"])
    return result


def merge_limits(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two measurements (before and after the matrix) as one: the best figure of every kernel. On a
    shared machine one pass can land in a busy moment; ``passes`` keeps both peaks."""
    merged = dict(first)
    for kind in ("fp32", "int8"):
        a, b = first.get(kind), second.get(kind)
        if not a or not b:
            merged[kind] = a or b
            continue
        by_kernel = {k: {n: max(v, b["by_kernel"].get(k, {}).get(n, 0.0)) for n, v in sizes.items()}
                     for k, sizes in a["by_kernel"].items()}
        winner = max(by_kernel, key=lambda k: max(by_kernel[k].values()))
        merged[kind] = {**a, "by_kernel": by_kernel, "winner": winner, "peak": max(by_kernel[winner].values()),
                        "passes": [a["peak"], b["peak"]]}
    memory = {k: max(v, second["memory"]["by_kernel"].get(k, 0.0)) for k, v in first["memory"]["by_kernel"].items()}
    best = max(memory, key=memory.get)
    merged["memory"] = {**first["memory"], "by_kernel": memory, "winner": best, "peak_gbps": memory[best]}
    merged["seconds"] = round(first["seconds"] + second["seconds"], 2)
    return merged


def peak_for(limits: dict[str, Any] | None, precision: str) -> float | None:
    """The measured peak a row of ``precision`` is compared with: FP32 rows with the FP32 peak, INT8
    rows with the INT8 peak; FP16 has no peak of its own on a CPU (None)."""
    kind = {"fp32": "fp32", "int8": "int8"}.get(precision)
    entry = (limits or {}).get(kind) if kind else None
    return entry["peak"] if entry else None


def share_problems(rows: Sequence[Any]) -> list[str]:
    """Rows whose share of a measured peak is above 100%: physically impossible, so a probe is wrong."""
    return [f"{r.variant}/{r.backend}-{r.precision} reaches {100 * r.peak_share:.0f}% of the measured "
            f"{r.precision.upper()} peak: the peak probe missed a faster kernel; this share is not a result"
            for r in rows if r.peak_share is not None and r.peak_share > 1.0]
