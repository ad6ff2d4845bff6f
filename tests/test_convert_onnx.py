"""converters: Lite0 and D0 to ONNX FP32/FP16/INT8 — real exports, real onnxruntime, no mocks.

Each artifact is exported once per session (module fixture) with realistic random weights
(converters.weights.realistic_random_: trained-like batch-norm statistics and head scales, so that
errors are measured on non-trivial outputs) and 8 synthetic calibration images.

Thresholds, from measurements on this machine (random seed 0, 4 held-out synthetic scenes; the
outputs have std 2 (logits) and 0.5 (box regressions)):

* FP32: max abs <= 1e-3 on raw outputs (measured 1.2e-5 Lite0, 2.8e-4 D0: float reassociation).
* FP16: measured cls max abs 0.014 / 0.024, box 0.003 / 0.006, cosines >= 0.999998, score max
  abs <= 0.005, top-100 agreement >= 0.9975. Asserted: cls max abs <= 0.1, box <= 0.03, cosines
  >= 0.9999, score max abs <= 0.02, top-100 >= 0.95.
* INT8, fully quantized (``--int8-mode full``: what the session fixture builds, see below):
  measured cls cosine 0.99985 / 0.9988, box cosine 0.9993 / 0.9932, top-100 agreement
  0.95 / 0.81, cls max abs 0.62 / 2.1, score max abs 0.13 / 0.36. Asserted (about 4x the measured
  1 - cosine): cls cosine >= 0.995, box cosine >= 0.98, top-100 >= 0.6, score max abs <= 0.6.
  A random network quantizes worse than a trained one (the published D0: box cosine 0.9998,
  docs/TOOLCHAIN.md); see converters.weights.
* INT8 accuracy-aware (one dedicated test, D0, converters.int8 with the onnxruntime recipe, target
  detection AP50 >= 0.5, cls >= 0.999, box >= 0.995 on 4 validation frames): the fully quantized
  model misses it (box cosine 0.9924 there, shortfall 1.52); the search (8 quantizations, the
  fully quantized one included) leaves 16 of 628 activation quantizers out (41 nodes excluded,
  left in float); held-out parity cls cosine 0.99982, box 0.99636, top-100 0.85 (fully
  quantized: 0.99963, 0.99296, 0.80), 5.0 MB instead of 4.9. Before the target was
  detection-level (cosines only, same ranking): also 41 nodes, held-out cls 0.99940, box 0.99638,
  top-100 0.89. Against random D0's FP32 detections the fully quantized model has detection AP50
  0.78 on the validation frames, which is why the test's AP50 term sits at the random-weight
  floor. The session fixture builds full INT8.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from converters import CalibrationError, ConvertError, OnnxExporter, convert
from converters.accuracy import AccuracyTarget
from converters.calibration import FolderSource, SyntheticSource, VideoSource, open_calibration_source, synthetic_frame
from converters.cli import main
from converters.onnx_exporter import INT8_NOTE, recorded
from converters.verify import DETECTION_AP_RANDOM_INT8
from converters.weights import build_model, resolve_weights
from edgedet.anchors import generate_anchors
from edgedet.manifest import MANIFEST_NAME, Manifest, ManifestError
from edgedet.preprocess import prepare
from parity import assert_fp16_parity, assert_fp32_matches_pytorch

VARIANTS = ("lite0", "d0")
PRECISIONS = ("fp32", "fp16", "int8")
COMMON = dict(formats="onnx", weights="random", allow_random=True, calibration="synthetic",
              calibration_count=8, int8_mode="full")  # the session fixture's INT8 (tests/conftest.py)
#: A target D0's fully quantized INT8 misses (box cosine 0.9926), so the accuracy-aware search runs.
#: Detection AP50 at the random-weight floor: against random D0's FP32 detections the fully
#: quantized model has AP50 0.78 on the validation frames, and the search is about the cosines here
#: (the AP50 term is tested on a fake recipe in tests/test_int8_search.py).
MODERATE = AccuracyTarget(detection_ap50=DETECTION_AP_RANDOM_INT8, cls_cosine=0.999, box_cosine=0.995)


@pytest.fixture(scope="module")
def exported(onnx_exports):
    return onnx_exports


@pytest.fixture(scope="module")
def torch_models():
    """The same realistic-random models the pipeline built (seed 0), for independent checks."""
    return {v: build_model(v, 90, resolve_weights("random", v, allow_random=True)) for v in VARIANTS}


def artifact(out: Path, variant: str, precision: str) -> Path:
    return out / variant / f"onnxruntime-{precision}"


def run_onnx(directory: Path, frame: np.ndarray) -> tuple[Manifest, np.ndarray, np.ndarray]:
    """Run an artifact the way the runtime will: everything from its manifest."""
    manifest = Manifest.load(directory)
    manifest.verify_files(directory)
    batch, _ = prepare(frame, manifest.input)  # the frame canvas (these artifacts take frames)
    session = ort.InferenceSession(str(manifest.model_path(directory)), providers=["CPUExecutionProvider"])
    cls_name = manifest.output("cls_logits").name
    box_name = manifest.output("box_regression").name
    cls, box = session.run([cls_name, box_name], {manifest.input.name: batch})
    return manifest, cls, box


# ------------------------------------------------------------------------------------ the artifacts


def test_every_artifact_built(exported):
    out, report = exported
    assert report.ok, report.table()
    assert [(r.variant, r.precision, r.status) for r in report.results] == [
        (v, p, "built") for v in VARIANTS for p in PRECISIONS]
    for variant in VARIANTS:
        assert sorted(p.name for p in (out / variant).iterdir()) == [
            f"onnxruntime-{p}" for p in sorted(PRECISIONS)]  # no staging or temp leftovers
        for precision in PRECISIONS:
            assert sorted(p.name for p in artifact(out, variant, precision).iterdir()) == [
                "manifest.json", "model.onnx"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_manifest_describes_the_artifact(exported, variant, precision):
    out, report = exported
    directory = artifact(out, variant, precision)
    manifest = Manifest.load(directory)
    manifest.verify_files(directory)
    model = onnx.load(str(directory / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 18
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["cls_logits", "box_regression"]
    n = generate_anchors(manifest.model_config()).shape[0]
    size = manifest.image_size
    assert (manifest.variant, manifest.backend, manifest.precision) == (variant, "onnxruntime", precision)
    # Frame input (the default, converters.frame_input): the uint8 BGR canvas at every precision.
    assert manifest.input.shape == (1, size, size, 3) and manifest.input.layout == "NHWC"
    assert (manifest.input.dtype, manifest.input.color, manifest.input.preprocessing) == ("uint8", "BGR", "model")
    assert [n.op_type for n in model.graph.node[:3]] == ["Transpose", "Cast", "Conv"]
    assert manifest.output("cls_logits").shape == (1, n, 90)
    assert manifest.output("box_regression").shape == (1, n, 4)
    assert manifest.weights.random is True and manifest.weights.source == "random:seed=0"
    assert manifest.parity["passed"] is True
    assert manifest.tools["onnxruntime"] == ort.__version__
    if precision == "int8":
        assert manifest.calibration is not None and manifest.calibration.count == 8
        assert manifest.calibration.source == "synthetic:0"
        ops = {node.op_type for node in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        # The swish note only where there is swish: the D-series, not Lite (ReLU6).
        note = {"note": INT8_NOTE} if variant == "d0" else {}
        assert manifest.options == {"input": "frame", "int8_mode": "full", **note}
        assert manifest.float_layers == ()  # fully quantized: every compute node INT8 (the front end is input)
        assert recorded(model) == ((), None)  # no accuracy-aware search ran
    else:
        assert manifest.calibration is None
        assert manifest.options == {"input": "frame"} and manifest.float_layers == ()
    result = report.get(variant, "onnx", precision)
    assert result.parity == manifest.parity
    assert result.size_mb == pytest.approx((directory / "model.onnx").stat().st_size / 1e6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sizes(exported, variant):
    out, _ = exported
    size = {p: (artifact(out, variant, p) / "model.onnx").stat().st_size for p in PRECISIONS}
    assert size["fp16"] == pytest.approx(size["fp32"] / 2, rel=0.05)
    assert size["int8"] < 0.4 * size["fp32"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_fp32_matches_pytorch(exported, torch_models, variant):
    """Independent of the pipeline's own check: a fresh image, PyTorch vs onnxruntime, raw outputs."""
    out, _ = exported
    assert_fp32_matches_pytorch(run_onnx, artifact(out, variant, "fp32"), torch_models[variant])


@pytest.mark.parametrize("variant", VARIANTS)
def test_fp16_parity(exported, variant):
    out, _ = exported
    p = Manifest.load(artifact(out, variant, "fp16")).parity
    assert_fp16_parity(p)
    assert p["detection_ap50"] >= 0.95
    model = onnx.load(str(artifact(out, variant, "fp16") / "model.onnx"))
    fp16_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(fp16_weights) > 0.9 * len(model.graph.initializer)


@pytest.mark.parametrize("variant", VARIANTS)
def test_int8_parity(exported, variant):
    out, _ = exported
    p = Manifest.load(artifact(out, variant, "int8")).parity
    assert 0 < p["cls_max_abs"]
    assert p["cls_cosine"] >= 0.995 and p["box_cosine"] >= 0.98
    assert p["score_max_abs"] <= 0.6
    assert p["top100_agreement"] >= 0.6
    # the decoded detections against FP32's (measured AP50 0.88 Lite0, 0.72 D0 on random weights)
    assert 0.6 <= p["detection_ap50"] < 1 and 0.6 <= p["detection_f1"] < 1


def test_fp32_graph_is_traced_once_per_unchanged_model(monkeypatch):
    """export_fp32 memoizes the last graph for the same model object (ONNX and OpenVINO share it),
    hands out copies, and traces again once a weight changed in place."""
    from converters.onnx_exporter import export_fp32, forget_fp32
    from edgedet.config import get_config

    traces = []
    real_export = torch.onnx.export

    def counting_export(*args, **kwargs):
        traces.append(1)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counting_export)
    config = get_config("lite0")
    model = build_model("lite0", 90, resolve_weights("random", "lite0", allow_random=True))
    forget_fp32()
    first = export_fp32(model, config)
    reference = first.SerializeToString()
    first.graph.node.pop()  # a caller's edits stay in its copy
    again = export_fp32(model, config)
    assert len(traces) == 1 and again.SerializeToString() == reference
    with torch.no_grad():
        model.class_net.predict.conv_pw.bias.add_(1.0)
    changed = export_fp32(model, config)
    assert len(traces) == 2 and changed.SerializeToString() != reference
    forget_fp32()


def test_int8_d0_squeeze_excite_pool_runs_in_int8(exported):
    """D0's squeeze-excite means become GlobalAveragePool between Q/DQ pairs in the INT8 graph,
    which onnxruntime runs as QLinearGlobalAveragePool. (As ReduceMean they stayed float on NHWC
    tensors: 6 ms of D0's 41 ms INT8 kernel time here, and INT8 D0 was slower than FP32.) The FP32
    graph keeps its exact ReduceMean."""
    out, _ = exported

    def graph(precision: str) -> onnx.ModelProto:
        return onnx.load(str(artifact(out, "d0", precision) / "model.onnx"))

    fp32, int8 = graph("fp32"), graph("int8")
    assert [n.op_type for n in fp32.graph.node].count("ReduceMean") == 16
    producers = {o: n for n in int8.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in int8.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    pools = [n for n in int8.graph.node if n.op_type == "GlobalAveragePool"]
    assert len(pools) == 16 and "ReduceMean" not in {n.op_type for n in int8.graph.node}
    for pool in pools:
        assert producers[pool.input[0]].op_type == "DequantizeLinear"
        assert [c.op_type for c in consumers[pool.output[0]]] == ["QuantizeLinear"]


def _optimized(model: onnx.ModelProto | Path, path: Path) -> onnx.ModelProto:
    """The graph onnxruntime's CPU provider runs (all optimizations, as the runtime backend sets them)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path)
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


def _fusion_graph() -> onnx.ModelProto:
    """A small FP32 graph shaped like a BiFPN node: a conv padded by replication and max-pooled (a
    resample), weighted by a positive constant and summed with a second weighted branch (fast
    normalized fusion), swish, a last conv."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    inits = [const("w1", rng.normal(0, 0.3, (16, 8, 3, 3))), const("b1", rng.normal(0, 0.1, 16)),
             const("w2", rng.normal(0, 0.3, (16, 8, 1, 1))), const("w3", rng.normal(0, 0.3, (4, 16, 1, 1))),
             const("f1", 0.6), const("f2", 0.4),
             numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "pads")]
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Pad", ["a", "pads"], ["a_pad"], name="pad", mode="edge"),
        helper.make_node("MaxPool", ["a_pad"], ["pooled"], name="pool", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Conv", ["images", "w2"], ["b"], name="conv_b", strides=[2, 2]),
        helper.make_node("Mul", ["pooled", "f1"], ["m1"], name="weight_1"),
        helper.make_node("Mul", ["b", "f2"], ["m2"], name="weight_2"),
        helper.make_node("Add", ["m1", "m2"], ["s"], name="fuse"),
        helper.make_node("Sigmoid", ["s"], ["g"], name="swish_sigmoid"),
        helper.make_node("Mul", ["s", "g"], ["act"], name="swish_mul"),
        helper.make_node("Conv", ["act", "w3"], ["y"], name="conv_out"),
    ]
    graph = helper.make_graph(nodes, "fusion",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_int8_rewrites_on_a_small_graph(tmp_path):
    """converters.onnx_int8_rewrites on a graph quantized by the recipe's own quantize_static call:
    the fusion weights become scales and the pad runs on integer codes (in the graph, and in the
    graph onnxruntime runs: no float island, one QLinearMul left, the swish's), computing the same
    up to INT8 rounding and no further from FP32 than before."""
    from converters.onnx_exporter import _Quantizer
    from converters.onnx_int8_rewrites import rewrite

    fp32 = _fusion_graph()
    rng = np.random.default_rng(1)
    frames = [rng.normal(0, 1, (1, 8, 16, 16)).astype(np.float32) for _ in range(9)]
    raw = _Quantizer(fp32, tmp_path).calibrate(lambda: iter(frames[:8]), "random frames")
    new = onnx.ModelProto()
    new.CopyFrom(raw)
    assert rewrite(new) == {"integer_pads": 1, "scalar_muls_into_scales": 2}
    onnx.checker.check_model(new, full_check=True)
    nodes = {n.name: n for n in new.graph.node}
    producers = {o: n for n in new.graph.node for o in n.output}
    assert "weight_1" not in nodes and "weight_2" not in nodes and "swish_mul" in nodes
    assert producers[nodes["pad"].input[0]].op_type == "QuantizeLinear"  # the conv's codes, padded as they are
    assert rewrite(new) == {"integer_pads": 0, "scalar_muls_into_scales": 0}  # nothing left to rewrite

    def ops(model: onnx.ModelProto, name: str) -> list[str]:
        return [n.op_type for n in _optimized(model, tmp_path / f"{name}.onnx").graph.node]

    before, after = ops(raw, "before"), ops(new, "after")
    assert before.count("QLinearMul") == 3 and after.count("QLinearMul") == 1
    assert before.count("DequantizeLinear") == 2 and after.count("DequantizeLinear") == 1  # the output's only
    assert after.count("QuantizeLinear") == 1 and "Pad" in after  # the input's only; the pad on uint8

    def run(model: onnx.ModelProto) -> np.ndarray:
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"images": frames[8]})[0]

    ref, old_out, new_out = run(fp32), run(raw), run(new)
    step = float(np.abs(ref).max()) / 127
    assert np.abs(new_out - old_out).max() <= 4 * step  # the same computation, one rounding fewer per fold
    rms = lambda d: float(np.sqrt(np.mean(d ** 2)))  # noqa: E731
    assert rms(new_out - ref) <= 1.05 * rms(old_out - ref)


@pytest.mark.parametrize("variant", VARIANTS)
def test_int8_graph_onnxruntime_runs(exported, tmp_path, variant):
    """In the INT8 graph onnxruntime runs, the only float tensors are the model's input and outputs:
    no Pad between a dequantization and a quantization (Lite0 and D0: 14 before the BiFPN's max
    pools), and no QLinearMul by a constant (D0's 57 fusion weights are scales now); what is left
    of QLinearMul is D0's swish and squeeze-excite products (102 + 16)."""
    graph = _optimized(artifact(exported[0], variant, "int8") / "model.onnx", tmp_path / "optimized.onnx").graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 2
    assert ops.count("Pad") == 14 and ops.count("QLinearConv") > 150
    initializers = {t.name for t in graph.initializer}
    muls = [n for n in graph.node if n.op_type == "QLinearMul"]
    assert not any(n.input[0] in initializers or n.input[3] in initializers for n in muls)
    assert len(muls) == (118 if variant == "d0" else 0)


def test_int8_accuracy_aware(exported, tmp_path):
    """D0's fully quantized INT8 misses MODERATE; the accuracy-aware search (converters.int8 with
    the onnxruntime recipe) leaves the nodes whose quantization hurts most in float until it is
    met, in a few quantizations, and the manifest lists them. (The one accuracy-aware ONNX export
    of the suite: about a minute.)"""
    out, _ = exported
    exporter = OnnxExporter(accuracy_target=MODERATE, threads=1)
    started = time.perf_counter()
    report = convert("d0", precisions="int8", out_dir=tmp_path / "exports", exporters={"onnx": exporter},
                     **{**COMMON, "int8_mode": None})
    print(f"\n{report.table()}\n(accuracy-aware D0 INT8: {time.perf_counter() - started:.1f} s)")
    assert report.ok, report.table()
    search = exporter.last_int8
    assert search is not None
    print(search)
    assert search.full["shortfall"] > 1.0  # the fully quantized model missed the target ...
    assert search.met and search.figures["shortfall"] <= MODERATE.headroom  # ... the search met it
    assert search.quantizations <= 12  # doubling + bisection, not one quantization per node
    assert 0 < len(search.float_units) < search.units
    assert search.figures["cls_cosine"] > search.full["cls_cosine"]
    assert search.figures["box_cosine"] > search.full["box_cosine"]

    directory = artifact(tmp_path / "exports", "d0", "int8")
    manifest = Manifest.load(directory)
    manifest.verify_files(directory)
    assert manifest.options == {"input": "frame", "int8_mode": "accuracy-aware", "accuracy_target": MODERATE.describe(),
                                "note": INT8_NOTE}
    model = onnx.load(str(directory / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    layers, stored = recorded(model)
    assert layers and set(layers) <= set(search.float_layers)  # the compute nodes among them
    assert stored == search.record()
    assert layers and set(layers) <= set(manifest.float_layers)
    nodes = {node.name: node for node in model.graph.node}
    compute = [n for n in model.graph.node
               if n.op_type in ("Conv", "Mul", "Add", "Sigmoid", "GlobalAveragePool")]
    assert set(manifest.float_layers) <= set(nodes)
    assert 0 < len(manifest.float_layers) < 0.25 * len(compute)  # most of the network stays INT8
    # The convolutions left in float run on float weights, except weights shared with a quantized
    # convolution (the heads share theirs across levels): onnxruntime quantizes those for every user.
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    convs = [nodes[name] for name in layers if nodes[name].op_type == "Conv"]
    assert convs and any(conv.input[1] in floats for conv in convs)
    quantized_convs = [n for n in compute if n.op_type == "Conv" and n.name not in layers]
    for conv in convs:
        assert conv.input[1] in floats or any(other.input[1] == conv.input[1] for other in quantized_convs)

    # On the parity check's held-out images (never seen by the search) it agrees better with FP32
    # than the fully quantized model, and the target holds (with a small allowance for unseen images).
    p = manifest.parity
    full = Manifest.load(artifact(out, "d0", "int8")).parity
    assert p["cls_cosine"] > full["cls_cosine"] and p["box_cosine"] > full["box_cosine"]
    assert p["top100_agreement"] >= full["top100_agreement"]
    assert MODERATE.shortfall(p) <= 1.1
    size = (directory / "model.onnx").stat().st_size
    assert size < 0.4 * (artifact(out, "d0", "fp32") / "model.onnx").stat().st_size


def test_accuracy_target_is_shared():
    """One AccuracyTarget for every backend that makes accuracy-aware INT8."""
    import converters.accuracy
    import converters.onnx_exporter
    import converters.openvino_exporter
    import converters.tflite_exporter

    for module in (converters.onnx_exporter, converters.openvino_exporter, converters.tflite_exporter):
        assert module.AccuracyTarget is converters.accuracy.AccuracyTarget
    assert OnnxExporter(accuracy_aware=False).accuracy_target is None
    assert OnnxExporter(accuracy_target=MODERATE).accuracy_target == MODERATE


@pytest.mark.parametrize("precision", PRECISIONS)
def test_runs_in_onnxruntime_on_a_camera_frame(exported, precision):
    out, _ = exported
    frame = synthetic_frame(99, 0, size=(1280, 720))
    manifest, cls, box = run_onnx(artifact(out, "lite0", precision), frame)
    assert cls.shape == manifest.output("cls_logits").shape and cls.dtype == np.float32
    assert box.shape == manifest.output("box_regression").shape
    assert np.isfinite(cls).all() and np.isfinite(box).all()


# ------------------------------------------------------------------------------------ reruns


def test_rerun_skips(exported):
    out, _ = exported
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    report = convert(list(VARIANTS), precisions=list(PRECISIONS), out_dir=out, **COMMON)
    assert [r.status for r in report.results] == ["skipped"] * 6
    assert all(r.parity["passed"] for r in report.results)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_damaged_artifact_is_rebuilt(exported, tmp_path):
    out, _ = exported
    work = tmp_path / "exports"
    shutil.copytree(out / "lite0", work / "lite0")
    fp16 = artifact(work, "lite0", "fp16")
    old = Manifest.load(fp16)
    model = fp16 / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])  # truncated by a bad copy
    with pytest.raises(ManifestError):
        old.verify_files(fp16)

    report = convert("lite0", precisions="fp32,fp16", out_dir=work, **COMMON)
    assert [(r.precision, r.status) for r in report.results] == [("fp32", "skipped"), ("fp16", "built")]
    new = Manifest.load(fp16)
    new.verify_files(fp16)
    assert new.export_key == old.export_key and new.files == old.files  # deterministic export
    assert sorted(p.name for p in (work / "lite0").iterdir()) == [
        f"onnxruntime-{p}" for p in sorted(PRECISIONS)]


def test_force_rebuilds_and_parity_failures_are_kept_aside(exported, tmp_path):
    """--force rebuilds up-to-date artifacts. One that then fails its parity thresholds is
    published as <name>.failed, reported, and does not replace the good one; the others go on."""
    out, _ = exported
    work = tmp_path / "exports"
    shutil.copytree(out / "lite0", work / "lite0")
    old_fp32 = (artifact(work, "lite0", "fp32") / MANIFEST_NAME).read_text()
    old_fp16 = (artifact(work, "lite0", "fp16") / MANIFEST_NAME).read_text()
    time.sleep(1.1)  # "created" has 1 s resolution
    strict = {"fp32": {"cls_max_abs": ("max", 1e-3)}, "fp16": {"cls_max_abs": ("max", 1e-12)}}
    report = convert("lite0", precisions="fp32,fp16", out_dir=work, force=True, thresholds=strict,
                     **COMMON)
    fp32, fp16 = report.results
    assert (fp32.status, fp16.status) == ("built", "failed") and not report.ok

    rebuilt = Manifest.load(artifact(work, "lite0", "fp32"))
    rebuilt.verify_files(artifact(work, "lite0", "fp32"))
    assert rebuilt.created != json.loads(old_fp32)["created"]  # really rebuilt
    assert rebuilt.files == json.loads(old_fp32)["files"]  # ... to the same bytes

    assert "cls_max_abs" in fp16.error and "FAILED lite0/onnxruntime-fp16" in report.table()
    failed = Manifest.load(work / "lite0" / "onnxruntime-fp16.failed")
    assert failed.parity["passed"] is False and "cls_max_abs" in failed.parity["failed_checks"]
    assert (artifact(work, "lite0", "fp16") / MANIFEST_NAME).read_text() == old_fp16  # good one kept
    assert sorted(p.name for p in (work / "lite0").iterdir()) == [
        "onnxruntime-fp16", "onnxruntime-fp16.failed", "onnxruntime-fp32", "onnxruntime-int8"]


def test_changed_inputs_are_not_skipped(exported, tmp_path):
    """Another calibration count changes the INT8 export key (checked without exporting)."""
    out, _ = exported
    key = Manifest.load(artifact(out, "lite0", "int8")).export_key
    from converters.pipeline import _plan

    plan = _plan("lite0", "onnx", "int8", "random", out, calibration="synthetic", calibration_count=9,
                 allow_random=True, force=False, num_classes=None, labels=None, seed=0, exporters=None,
                 int8_mode="full")
    assert plan.jobs[0].key != key
    plan = _plan("lite0", "onnx", "int8", "random", out, calibration="synthetic", calibration_count=8,
                 allow_random=True, force=False, num_classes=None, labels=None, seed=0, exporters=None,
                 int8_mode="full")
    assert plan.jobs[0].key == key


def test_options_are_part_of_the_export_key(exported):
    """Full vs accuracy-aware INT8, and another target, rebuild INT8 only (checked without exporting)."""
    out, _ = exported
    from converters.pipeline import _plan

    manifest = Manifest.load(artifact(out, "d0", "int8"))

    def planned(precision: str, exporter: OnnxExporter | None = None, **kwargs) -> str:
        plan = _plan("d0", "onnx", precision, "random", out, calibration="synthetic", calibration_count=8,
                     allow_random=True, force=False, num_classes=None, labels=None, seed=0,
                     exporters={"onnx": exporter} if exporter else None, **kwargs)
        return plan.jobs[0].key

    full = planned("int8", OnnxExporter(accuracy_aware=False))
    assert full == manifest.export_key == planned("int8", int8_mode="full")
    assert planned("int8", OnnxExporter(accuracy_target=None)) == full
    aware = planned("int8", OnnxExporter())
    assert aware != full and planned("int8", int8_mode="accuracy-aware") == aware
    assert planned("int8") == full  # random weights: full unless asked for (trained: accuracy-aware)
    assert planned("int8", OnnxExporter(accuracy_target=AccuracyTarget(box_cosine=0.997))) not in (full, aware)
    assert planned("int8", OnnxExporter(threads=1)) == aware  # speed only: not part of the key
    # FP32 and FP16 have no options: the INT8 mode does not rebuild them.
    for precision in ("fp32", "fp16"):
        assert planned(precision, OnnxExporter(accuracy_aware=False)) == planned(precision, OnnxExporter()) \
            == Manifest.load(artifact(out, "d0", precision)).export_key
    assert OnnxExporter().options("int8") == {"input": "frame", "int8_mode": "accuracy-aware",
                                              "accuracy_target": AccuracyTarget().describe()}
    assert OnnxExporter(accuracy_aware=False).options("int8") == {"input": "frame", "int8_mode": "full"}
    from edgedet.config import get_config

    assert OnnxExporter().note(get_config("d0"), "int8") == INT8_NOTE
    assert OnnxExporter().note(get_config("lite0"), "int8") is None and OnnxExporter().note(get_config("d0"), "fp32") is None
    assert OnnxExporter().options("fp16") == {"input": "frame"}
    assert OnnxExporter(input_kind="tensor").options("fp16") == {"input": "tensor"}


# ------------------------------------------------------------------------------------ interruptions


class CrashingExporter(OnnxExporter):
    """A real ONNX exporter that dies halfway through writing its model file."""

    def __init__(self, payload: bytes, error: BaseException) -> None:
        super().__init__()
        self.payload, self.error = payload, error

    def export(self, model, config, out_dir, precision, calibration):
        with open(Path(out_dir) / "model.onnx", "wb") as f:
            f.write(self.payload[: len(self.payload) // 2])
            f.flush()
            raise self.error


@pytest.mark.parametrize("error", [RuntimeError("simulated crash"), KeyboardInterrupt()])
def test_interrupted_export_leaves_nothing(exported, tmp_path, error):
    out, _ = exported
    payload = (artifact(out, "lite0", "fp32") / "model.onnx").read_bytes()
    exporter = CrashingExporter(payload, error)
    work = tmp_path / "exports"
    if isinstance(error, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            convert("lite0", precisions="fp32", out_dir=work, exporters={"onnx": exporter}, **COMMON)
    else:
        report = convert("lite0", precisions="fp32", out_dir=work, exporters={"onnx": exporter}, **COMMON)
        assert not report.ok and report.results[0].status == "failed"
        assert "simulated crash" in report.results[0].error
        assert "FAILED lite0/onnxruntime-fp32" in report.table()
    final = artifact(work, "lite0", "fp32")
    assert not (final / "model.onnx").exists() and not (final / MANIFEST_NAME).exists()
    assert list((work / "lite0").iterdir()) == []  # no staging directory, no half file anywhere


def test_failed_rebuild_keeps_the_previous_artifact(exported, tmp_path):
    out, _ = exported
    work = tmp_path / "exports"
    shutil.copytree(artifact(out, "lite0", "fp32"), artifact(work, "lite0", "fp32"))
    payload = (artifact(out, "lite0", "fp32") / "model.onnx").read_bytes()
    report = convert("lite0", precisions="fp32", out_dir=work, force=True,
                     exporters={"onnx": CrashingExporter(payload, RuntimeError("disk full"))}, **COMMON)
    assert not report.ok
    Manifest.load(artifact(work, "lite0", "fp32")).verify_files(artifact(work, "lite0", "fp32"))
    assert [p.name for p in (work / "lite0").iterdir()] == ["onnxruntime-fp32"]


# ------------------------------------------------------------------------------------ checks first


@pytest.mark.parametrize("kwargs, message", [
    (dict(allow_random=False), "--allow-random"),
    (dict(variants="d9"), "unknown variant 'd9'"),
    (dict(variants="d3-d1"), "must run upward"),
    (dict(formats="onnx,coreml"), "unknown format 'coreml'"),
    (dict(precisions="fp32,int4"), "unknown precision 'int4'"),
    (dict(calibration=None), "int8 needs calibration images"),
    (dict(calibration="/no/such/dir"), "does not exist"),
    (dict(calibration_count=0), "at least 1"),
    (dict(num_classes=3, labels=["a", "b"]), "2 labels given but lite0 has 3 classes"),
])
def test_bad_requests_fail_before_any_work(tmp_path, kwargs, message):
    args = dict(variants="lite0", precisions="fp32,int8", out_dir=tmp_path / "out", **COMMON)
    args.update(kwargs)
    started = time.perf_counter()
    with pytest.raises(ConvertError, match=message):
        convert(**args)
    assert time.perf_counter() - started < 5.0
    assert not (tmp_path / "out").exists()


def test_unreadable_and_unfitting_checkpoints(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ConvertError, match="not a readable PyTorch checkpoint"):
        convert("lite0", "onnx", "fp32", weights=str(bad), out_dir=tmp_path / "out")
    with pytest.raises(ConvertError, match="no checkpoint file"):
        convert("lite0", "onnx", "fp32", weights=str(tmp_path / "missing.pth"), out_dir=tmp_path / "out")
    state = {"backbone.conv_stem.weight": torch.zeros(32, 3, 3, 3)}
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(ConvertError, match="do not fit lite0"):
        convert("lite0", "onnx", "fp32", weights=str(tmp_path / "other.pth"), out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_package_names_the_extra(tmp_path):
    class NeedsMore(OnnxExporter):
        requires = {**OnnxExporter.requires, "edgedet_no_such_module": "no-such-package"}

    with pytest.raises(ConvertError, match=r"no-such-package.*pip install edgedet\[convert\]"):
        convert("lite0", precisions="fp32", out_dir=tmp_path / "out",
                exporters={"onnx": NeedsMore()}, **COMMON)


def test_unsupported_combination(tmp_path):
    class Fp32Only(OnnxExporter):
        precisions = ("fp32",)

    with pytest.raises(ConvertError, match="format onnx does not make int8"):
        convert("lite0", precisions="fp32,int8", out_dir=tmp_path / "out",
                exporters={"onnx": Fp32Only()}, **COMMON)
    assert not (tmp_path / "out").exists()


def test_variant_ranges():
    from converters import parse_variants

    assert parse_variants("d0-d3") == ["d0", "d1", "d2", "d3"]
    assert parse_variants("lite0-lite2,d0, d0") == ["lite0", "lite1", "lite2", "d0"]
    assert parse_variants("tf_efficientdet_d1") == ["d1"]
    assert len(parse_variants("all")) == 15


# ------------------------------------------------------------------------------------ CLI


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--variants", "d0-d3", "--allow-random", "--calibration", "examples:", "onnxruntime-int8"):
        assert needle in text


def test_cli_rerun_and_errors(exported, capsys):
    out, _ = exported
    code = main(["--variants", "lite0,d0", "--weights", "random", "--allow-random", "--calibration",
                 "synthetic", "--calibration-count", "8", "--int8-mode", "full", "--out", str(out), "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.count("skipped") == 6 and "0 built, 6 up to date, 0 failed" in captured.out
    assert main(["--variants", "lite0", "--weights", "random", "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err


def test_module_entry_point_runs():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "converters", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "edgedet-convert" in result.stdout
    script = shutil.which("edgedet-convert", path=os.path.dirname(sys.executable))
    assert script is not None, "entry point missing: pip install -e . --no-deps"


# ------------------------------------------------------------------------------------ calibration


def test_synthetic_source_is_deterministic_and_disjoint():
    source = open_calibration_source("synthetic")
    assert isinstance(source, SyntheticSource)
    a = list(source.calibration_frames(3))
    b = list(source.calibration_frames(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    held = list(source.holdout_frames(3))
    assert not any(np.array_equal(x, y) for x in a for y in held if x.shape == y.shape)
    assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in a + held)
    assert a[0].std() > 20  # scene-like, not flat
    assert not np.array_equal(next(open_calibration_source("synthetic:1").calibration_frames(1)), a[0])


def test_folder_source(tmp_path):
    import cv2

    for i in range(10):
        cv2.imwrite(str(tmp_path / f"img_{i:02d}.jpg"), synthetic_frame(7, i, size=(64, 48)))
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_calibration_source(tmp_path)
    assert isinstance(source, FolderSource)
    assert source.calibration_count(100) == 8  # 2 of 10 held out
    assert len(list(source.calibration_frames(100))) == 8
    assert len(list(source.holdout_frames(4))) == 2
    assert [f.shape for f in source.calibration_frames(3)] == [(48, 64, 3)] * 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="holds no images"):
        open_calibration_source(tmp_path / "empty")


def test_video_source(tmp_path):
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(20):
        writer.write(np.full((48, 64, 3), i * 12, np.uint8))
    writer.release()
    source = open_calibration_source(path)
    assert isinstance(source, VideoSource) and source.total == 20
    calibration = [round(f.mean() / 12) for f in source.calibration_frames(4)]
    holdout = [round(f.mean() / 12) for f in source.holdout_frames(4)]
    assert calibration == [0, 4, 9, 13] and holdout == [18, 19]


def test_detector_profile_shows_the_int8_note(exported):
    """The manifest's note on onnxruntime INT8 reaches the Detector's profile table."""
    from edgedet import Detector

    detector = Detector(variant="d0", models=exported[0], backend="onnxruntime", precision="int8", threads=1)
    (row,) = detector.profile
    assert (row.artifact, row.note) == ("d0/onnxruntime-int8", INT8_NOTE)
    header, line = str(detector.profile).splitlines()
    assert header.split()[-1] == "note" and line.endswith(INT8_NOTE)
    fp32 = Detector(variant="d0", models=exported[0], backend="onnxruntime", precision="fp32", threads=1)
    assert fp32.profile[0].note == "" and "note" not in str(fp32.profile)
