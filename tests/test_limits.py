"""The machine's limits: the peaks come from real kernels, the theory from the CPU's features, and a
share above 100% is reported as a problem."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from benchmarks import limits

ZEN = "processor\t: 0\ncpu MHz\t\t: 2596.000\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n" * 2
HASWELL = "processor\t: 0\ncpu MHz\t\t: 3000.0\nflags\t\t: sse2 avx2 fma\n"
PI4 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
PI5 = "processor\t: 0\nFeatures\t: fp asimd asimddp\n"


def test_theoretical_peaks_follow_the_vector_features_and_clock():
    zen = limits.theoretical_peaks(2, ZEN, "x86_64")
    assert (zen["isa"], zen["int8_isa"], zen["clock_ghz"]) == ("AVX-512", "AVX-512 VNNI", 2.596)
    assert zen["fp32_gflops"] == pytest.approx(64 * 2.596 * 2, abs=0.1)
    assert zen["int8_gops"] == pytest.approx(4 * zen["fp32_gflops"], abs=0.5)
    haswell = limits.theoretical_peaks(1, HASWELL, "x86_64")
    assert haswell["fp32_gflops"] == 96.0 and haswell["int8_gops"] == 192.0  # no VNNI: about 2x FP32
    # Arm boards report no clock in /proc/cpuinfo: the features still say what the vector units are.
    pi4, pi5 = limits.theoretical_peaks(4, PI4, "aarch64"), limits.theoretical_peaks(4, PI5, "aarch64")
    assert (pi4["isa"], pi4["fp32_gflops"], pi4["int8_op_per_cycle_core"]) == ("NEON", None, 32)
    assert pi5["int8_isa"] == "Arm SDOT" and pi5["int8_op_per_cycle_core"] == 64


def test_each_precision_is_compared_with_its_own_peak():
    found = {"fp32": {"peak": 400.0}, "int8": {"peak": 1200.0}}
    assert limits.peak_for(found, "fp32") == 400.0 and limits.peak_for(found, "int8") == 1200.0
    assert limits.peak_for(found, "fp16") is None and limits.peak_for(None, "fp32") is None


def test_a_share_above_the_peak_is_a_problem_not_a_result():
    rows = [SimpleNamespace(variant="lite1", backend="openvino", precision="fp32", peak_share=1.14),
            SimpleNamespace(variant="d0", backend="openvino", precision="int8", peak_share=0.31),
            SimpleNamespace(variant="d0", backend="tflite", precision="fp16", peak_share=None)]
    (problem,) = limits.share_problems(rows)
    assert "lite1/openvino-fp32" in problem and "114%" in problem and "not a result" in problem


def test_measured_limits_come_from_real_kernels():
    import torch

    threads = torch.get_num_threads()
    found = limits.measure_limits(1, (128,), repeats=2, min_seconds=0.05, bandwidth_mib=16)
    assert torch.get_num_threads() == threads  # the torch probe's thread count does not leak
    fp32, int8 = found["fp32"], found["int8"]
    assert {"openvino", "onnxruntime", "torch", "numpy"} <= set(fp32["by_kernel"]), fp32["unavailable"]
    assert fp32["peak"] == max(max(v.values()) for v in fp32["by_kernel"].values())
    assert set(int8["by_kernel"]) == {"onnxruntime MatMulInteger", "openvino u8 FullyConnected"}, int8["unavailable"]
    assert found["memory"]["peak_gbps"] > 0 and found["memory"]["winner"] in found["memory"]["by_kernel"]
    merged = limits.merge_limits(found, found)
    assert merged["fp32"]["peak"] == fp32["peak"] and merged["fp32"]["passes"] == [fp32["peak"]] * 2
