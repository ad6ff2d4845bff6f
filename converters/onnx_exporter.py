"""ONNX artifacts for onnxruntime: FP32, FP16 and INT8 (QDQ).

Every precision takes the uint8 frame canvas by default (``input_kind="frame"``: the front end of
:mod:`converters.frame_input`, put in front of the finished graph) or, with ``input_kind="tensor"``,
the normalized float32 NCHW tensor described below.

* **fp32**: ``torch.onnx.export`` (the dynamo exporter, opset 18, one self-contained file) at the
  variant's fixed size, simplified with onnxslim and checked with ``onnx.checker``. Input
  ``images`` [1,3,R,R] float32 (normalized, NCHW); outputs ``cls_logits`` [1,N,C] and
  ``box_regression`` [1,N,4].
* **fp16**: the FP32 graph with weights and compute in float16 (onnxruntime's
  ``transformers.float16`` converter, the maintained copy of onnxconverter-common's), keeping
  float32 inputs and outputs so the artifact is fed exactly like the FP32 one. On CPUs without
  FP16 kernels onnxruntime runs those nodes through inserted casts: FP16 there is for size (half
  the file), not speed.
* **int8**: onnxruntime's static quantization (``onnxruntime.quantization.quantize_static``) of
  the FP32 graph with its squeeze-excite means as ``GlobalAveragePool`` (quantizable), in QDQ
  format: per-channel symmetric int8 weights, asymmetric uint8 activations (the combination that
  was both fastest and most accurate here, see docs/TOOLCHAIN.md), MinMax ranges calibrated on frames
  preprocessed by :func:`edgedet.preprocess.preprocess`; then the rewrites of
  :mod:`converters.onnx_int8_rewrites` (fusion weights folded into scales, pads on integer codes),
  which remove passes onnxruntime cannot fuse. Float input/output. Calibration runs
  once: ``quantize_static`` writes the tensor ranges to a calibration cache
  (``calibration_cache_path``) that every later quantization of the same graph reads, so all
  candidates share the same ranges and only the quantization itself (2-6 s for D0) is repeated.

  **Accuracy-aware** (default; ``accuracy_aware=False`` or ``--int8-mode full`` keeps every layer
  INT8) by :mod:`converters.int8`. This module's recipe (:class:`_OnnxRecipe`): the units are the
  activation quantizers (QuantizeLinear/DequantizeLinear pairs), ranked by the rounding noise each
  adds relative to its signal, ``|DQ(Q(x)) - x|^2 / |x|^2`` on the ranking frames (the reductions
  are added to the quantized graph, so one run per frame measures every quantizer without copying
  D0's 1.2 GB of intermediate tensors out); a unit is left in float with ``nodes_to_exclude`` = the
  nodes that ask for its quantizer (a tensor's producer and consumers: onnxruntime puts a tensor
  through Q/DQ for every consumer as soon as one of them asks). The search's report is recorded in
  the model (``metadata_props``: ``edgedet.float_layers``, ``edgedet.accuracy_aware``) and the
  nodes left in float are listed in the manifest's ``float_layers``. Measured on realistic-random
  D0 the error is spread thinly: bypassing the single most harmful of its 628 activation
  quantizers removes 9% of the shortfall, and a leave-one-out ranking (5 minutes on two cores)
  needed about as many nodes in float for the same agreement as the rounding-noise ranking, which
  costs one run. The trained D0 against the (then cosine-only) default target: 4 quantizations,
  33 s, 7 nodes in float.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters import int8
from converters.accuracy import AccuracyTarget, Agreement, Outputs
from converters import frame_input
from converters.base import ArtifactIO, ConvertError, Exporter, Runner, register_exporter
from converters.fp32_cache import Fp32Cache
from converters.onnx_int8_rewrites import rewrite
from converters.quiet import quiet
from edgedet.manifest import InputSpec, NormalizationSpec, OutputSpec

if TYPE_CHECKING:
    import onnx

    from converters.calibration import Calibration
    from edgedet.config import ModelConfig

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "OPSET", "OnnxExporter", "export_fp32", "forget_fp32", "recorded"]

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("cls_logits", "box_regression")
OPSET = 18
MODEL_FILE = "model.onnx"
#: ``metadata_props`` keys where an accuracy-aware INT8 model records what the search did.
FLOAT_LAYERS_KEY = "edgedet.float_layers"
REPORT_KEY = "edgedet.accuracy_aware"

#: The manifest's ``options["note"]`` of a swish variant's INT8 artifact (the Detector's profile
#: shows it): where INT8 cannot pay on onnxruntime's CPU provider (measurements: docs/TOOLCHAIN.md).
INT8_NOTE = ("onnxruntime CPU runs each quantized swish as two integer passes (QLinearSigmoid + QLinearMul, "
             "no fused kernel): swish variants (D0-D7) gain little over FP32 here")

# onnx TensorProto element types -> manifest dtypes
_DTYPES = {1: "float32", 10: "float16", 2: "uint8", 3: "int8"}
# Ops that only move or pick data: a float one among them is not "a layer left in float".
_DATA_MOVEMENT = {"Reshape", "Transpose", "Concat", "Pad", "Slice", "Squeeze", "Unsqueeze", "Flatten",
                  "Identity", "Cast", "Shape", "Gather", "Split", "Expand", "Constant",
                  "QuantizeLinear", "DequantizeLinear", "MaxPool", "Resize"}


@register_exporter
class OnnxExporter(Exporter):
    """ONNX for onnxruntime (CPU execution provider): the uint8 frame canvas or the NCHW float32
    tensor in, float32 outputs, at every precision.

    Args:
        input_kind: ``"frame"`` (default): the artifact takes the letterboxed uint8 BGR canvas and
            normalizes inside the graph; ``"tensor"``: the normalized float32 NCHW tensor.
        threads: onnxruntime intra-op threads for the parity check and the accuracy-aware search
            (default: onnxruntime's choice).
        accuracy_aware: leave the nodes whose quantization hurts most in float until INT8 reaches
            ``accuracy_target`` (default; see :mod:`converters.int8`); ``False`` makes a fully
            quantized INT8 model.
        accuracy_target: the agreement accuracy-aware INT8 must reach; ``None`` = fully quantized.
    """

    name = "onnx"
    backend = "onnxruntime"
    precisions = ("fp32", "fp16", "int8")
    requires = {"onnx": "onnx", "onnxscript": "onnxscript", "onnxslim": "onnxslim",
                "onnxruntime": "onnxruntime"}
    revision = 5  # 5: frame input (converters.frame_input); 4: INT8 graph rewrites (converters.onnx_int8_rewrites)
    fp32_kind = "onnx"
    input_kinds = frame_input.INPUT_KINDS

    def __init__(self, *, threads: int | None = None, accuracy_aware: bool = True,
                 accuracy_target: AccuracyTarget | None = AccuracyTarget(),
                 input_kind: str = frame_input.DEFAULT_INPUT) -> None:
        self.input_kind = frame_input.check_input_kind(input_kind)
        self.threads = threads
        self.accuracy_target = accuracy_target if accuracy_aware else None
        #: What the last accuracy-aware INT8 export did, for logs and tests.
        self.last_int8: int8.Int8Report | None = None

    def options(self, precision: str) -> dict[str, str]:
        """The input (frame or tensor), and for INT8 full or accuracy-aware with the target."""
        return {"input": self.input_kind, **(int8.int8_options(self.accuracy_target) if precision == "int8" else {})}

    def note(self, config: ModelConfig, precision: str) -> str | None:
        """:data:`INT8_NOTE` for the INT8 artifacts of swish variants (the D-series; Lite uses ReLU6)."""
        return INT8_NOTE if precision == "int8" and config.activation == "swish" else None

    def _front(self, model: onnx.ModelProto, config: ModelConfig) -> onnx.ModelProto:
        """``model`` with the frame front end in front of it when the artifact takes frames."""
        if self.input_kind != "frame":
            return model
        return frame_input.onnx_frame_input(model, NormalizationSpec.from_config(config.normalization))

    # ------------------------------------------------------------------------------ export

    def export(self, model: Any, config: ModelConfig, out_dir: Path, precision: str,
               calibration: Calibration | None) -> list[Path]:
        import onnx

        self.check_request(precision, calibration)
        fp32 = export_fp32(model, config)
        path = Path(out_dir) / MODEL_FILE
        if precision == "fp32":
            _save(self._front(fp32, config), path)
        elif precision == "fp16":
            _save(self._front(_to_fp16(fp32), config), path)
        else:
            _spatial_means_to_global_pools(fp32)  # INT8 only: see there
            with tempfile.TemporaryDirectory(prefix="edgedet-onnx-int8-") as tmp:
                recipe = _OnnxRecipe(fp32, config, calibration, Path(tmp), self.threads)
                result = int8.quantize(recipe, self.accuracy_target, model, calibration)
            self.last_int8 = result.report
            if result.report:  # accuracy-aware: what it left in float, and why
                _record(result.model, result.report)
            _save(self._front(result.model, config), path)
            onnx.checker.check_model(str(path), full_check=True)
        return [path]

    def fp32_graph(self, model: Any, config: ModelConfig) -> bytes:
        return fp32_bytes(model, config)

    def seed_fp32(self, model: Any, config: ModelConfig, graph: bytes) -> None:
        seed_fp32(model, config, graph)

    def release(self) -> None:
        forget_fp32()

    # ------------------------------------------------------------------------------ inspect / run

    def describe(self, files: Sequence[Path], config: ModelConfig, precision: str) -> ArtifactIO:
        import onnx

        proto = onnx.load(str(files[0]), load_external_data=False)
        graph = proto.graph
        (inp,) = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
        dtype, shape = _value_info(inp)
        normalization = NormalizationSpec.from_config(config.normalization)
        if inp.name == INPUT_NAME and dtype == "uint8" and len(shape) == 4 and shape[3] == 3:
            input_spec = frame_input.frame_spec(inp.name, shape[1], normalization, batch=shape[0])
        elif inp.name != INPUT_NAME or len(shape) != 4 or shape[1] != 3:
            raise ConvertError(f"unexpected ONNX input {inp.name!r} {shape}")
        else:
            input_spec = InputSpec(name=inp.name, shape=shape, layout="NCHW", dtype=dtype,
                                   normalization=normalization, color="RGB", quantization=None)
        outputs = []
        for out in graph.output:
            dtype, shape = _value_info(out)
            if out.name not in OUTPUT_NAMES:
                raise ConvertError(f"unexpected ONNX output {out.name!r}")
            outputs.append(OutputSpec(name=out.name, role=out.name, shape=shape, dtype=dtype))
        return ArtifactIO(input=input_spec, outputs=tuple(outputs),
                          float_layers=_float_layers(proto, precision))

    def runner(self, files: Sequence[Path], io: ArtifactIO) -> Runner:
        # The runtime's own backend: an artifact is verified exactly as a device will run it.
        from edgedet.backends.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(files[0], threads=self.threads)
        names = {o.role: o.name for o in io.outputs}
        np_dtype = np.dtype(io.input.dtype)

        def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            outputs = backend.run(np.ascontiguousarray(batch, dtype=np_dtype))
            return (np.asarray(outputs[names["cls_logits"]], np.float32),
                    np.asarray(outputs[names["box_regression"]], np.float32))

        return run


# ---------------------------------------------------------------------------------- FP32

#: The FP32 graph of the last model (serialized), shared by the ONNX and OpenVINO exporters.
_FP32: Fp32Cache[bytes] = Fp32Cache(size=1)


def forget_fp32() -> None:
    """Drop the memoized FP32 graph (the exporters call this when a convert() run ends)."""
    _FP32.clear()


def fp32_bytes(model: Any, config: ModelConfig) -> bytes:
    """The serialized FP32 graph of ``model`` (memoized, see :func:`export_fp32`)."""
    return _FP32.get(model, config, lambda: _trace(model, config).SerializeToString())


def seed_fp32(model: Any, config: ModelConfig, graph: bytes) -> None:
    """Take ``graph`` (:func:`fp32_bytes` of another process) as ``model``'s FP32 graph."""
    _FP32.put(model, config, graph)


def export_fp32(model: Any, config: ModelConfig) -> onnx.ModelProto:
    """The simplified, checked FP32 ONNX graph of ``model`` (also the OpenVINO exporter's source).

    The last graph is memoized by weights (:class:`converters.fp32_cache.Fp32Cache`) and returned
    as a fresh copy, so the ONNX and OpenVINO exporters of one run trace each model once (8-16 s
    per variant)."""
    import onnx

    return onnx.load_from_string(fp32_bytes(model, config))


def _trace(model: Any, config: ModelConfig) -> onnx.ModelProto:
    import onnx
    import onnxslim
    import torch

    size = getattr(model, "image_size", config.image_size)
    dummy = torch.zeros(1, 3, size, size)
    # The dynamo exporter narrates every step on stdout and warns about internals; keep both out
    # of the CLI's output (errors still raise).
    with quiet(), torch.no_grad():
        program = torch.onnx.export(
            model, (dummy,), dynamo=True, opset_version=OPSET, external_data=False,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), verbose=False, optimize=True,
        )
        proto = program.model_proto
        slim = onnxslim.slim(proto)
    if not isinstance(slim, onnx.ModelProto):
        raise ConvertError("onnxslim returned no model")
    slim.producer_name = "edgedet-convert"
    onnx.checker.check_model(slim, full_check=True)
    return slim


def _spatial_means_to_global_pools(model: onnx.ModelProto) -> int:
    """Replace each ``ReduceMean`` over H and W of an NCHW tensor (keepdims; the squeeze-excite
    pools of the B0-B6 backbones) by the equivalent ``GlobalAveragePool``, in place; returns the
    count. onnxruntime runs a quantized GlobalAveragePool as QLinearGlobalAveragePool on NHWC
    data, while a ReduceMean stays float on the NHWC tensors of a QDQ graph: on D0 its 16 means
    took 6 ms of 41 ms INT8 kernel time (INT8 was slower than FP32), as pools 0.7 ms.

    For INT8 graphs only: onnxruntime's float GlobalAveragePool sums a channel in one float32
    accumulator, which over D0's 256x256 first-stage maps moved FP32 logits by up to 5e-4 (ReduceMean:
    2e-5), while INT8's own error is ~1000x larger."""
    import onnx
    from onnx import numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(a.t) for n in model.graph.node
                      if n.op_type == "Constant" for a in n.attribute if a.name == "value"})
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]
             if v.type.tensor_type.HasField("shape")}
    count = 0
    for i, node in enumerate(model.graph.node):
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: a for a in node.attribute}
        if len(node.input) > 1 and node.input[1] in constants:
            axes = constants[node.input[1]].ravel().tolist()
        elif "axes" in attrs:
            axes = list(attrs["axes"].ints)
        else:
            continue
        keepdims = attrs["keepdims"].i if "keepdims" in attrs else 1
        if keepdims != 1 or sorted(int(a) % 4 for a in axes) != [2, 3]:
            continue
        pool = onnx.helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name)
        model.graph.node.remove(node)
        model.graph.node.insert(i, pool)
        count += 1
    return count


def _to_fp16(fp32: onnx.ModelProto) -> onnx.ModelProto:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet():
        fp16 = convert_float_to_float16(fp32, keep_io_types=True, disable_shape_infer=False)
    _topological_sort(fp16.graph)  # the converter appends its input casts at the end
    onnx.checker.check_model(fp16, full_check=True)
    return fp16


def _topological_sort(graph: Any) -> None:
    """Reorder ``graph.node`` in place so that every node comes after its inputs' producers
    (stable: nodes keep their relative order where the dependencies allow)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        remaining = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            names = ", ".join(n.name or n.op_type for n in remaining[:5])
            raise ConvertError(f"ONNX graph has a cycle or dangling inputs (at {names})")
        pending = remaining
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


# ---------------------------------------------------------------------------------- INT8


class _OnnxRecipe:
    """The onnxruntime recipe of :mod:`converters.int8`: ``quantize_static`` with
    ``nodes_to_exclude`` then :func:`converters.onnx_int8_rewrites.rewrite`, units = activation
    quantizers ranked by rounding noise, candidates run by onnxruntime as deployed (the int8
    kernels of a QDQ model)."""

    def __init__(self, fp32: onnx.ModelProto, config: ModelConfig, calibration: Calibration, workdir: Path,
                 threads: int | None) -> None:
        self.fp32, self.threads = fp32, threads
        self.quantizer = _Quantizer(fp32, workdir)
        #: The fully quantized model as quantize_static made it (before the rewrites), for ranking.
        self._full_raw: onnx.ModelProto | None = None
        size, norm = _input_size(fp32), config.normalization
        self._batches = lambda: calibration.batches(size, norm.mean, norm.std, layout="NCHW", dtype=np.float32)
        self._source = calibration.source.description

    def quantize(self, float_members: Sequence[str]) -> onnx.ModelProto:
        import onnx

        if not self.quantizer.cache.is_file():
            raw = self.quantizer.calibrate(self._batches, self._source, float_members)
        else:
            raw = self.quantizer.quantize(float_members)
        if not float_members:
            self._full_raw = raw
        model = onnx.ModelProto()
        model.CopyFrom(raw)
        rewrite(model)
        return model

    def run(self, candidate: onnx.ModelProto, batches: Sequence[np.ndarray]) -> list[Outputs]:
        session = _session(candidate, self.threads)
        return [tuple(session.run(list(OUTPUT_NAMES), {INPUT_NAME: b})) for b in batches]  # type: ignore[misc]

    def rank(self, full: onnx.ModelProto, agreement: Agreement, trial: int8.Trial) -> int8.Ranking:
        # Ranked before the rewrites: every Q/DQ pair of quantize_static is a quantizer the search
        # can leave in float (a pad on integer codes has no pair of its own, yet its input's
        # quantizer still rounds).
        known = {node.name for node in self.fp32.graph.node}
        units = []
        raw = full if self._full_raw is None else self._full_raw
        for q in _rank_quantizers(raw, agreement.ranking_batches, self.threads):
            nodes = tuple(n for n in q.nodes if n in known)
            if nodes:
                units.append(int8.Unit(q.tensor, nodes))
        return int8.Ranking(tuple(units))


class _Quantizer:
    """``quantize_static`` of one FP32 graph, calibrated once: the first call writes the tensor
    ranges to a calibration cache in ``workdir``, every later one reads them from there."""

    def __init__(self, fp32: onnx.ModelProto, workdir: Path) -> None:
        self.source = workdir / "fp32.onnx"
        self.cache = workdir / "ranges.json"
        self.output = workdir / "int8.onnx"
        _save(fp32, self.source)

    def calibrate(self, batches: Callable[[], Iterator[np.ndarray]], source: str,
                  exclude: Sequence[str] = ()) -> onnx.ModelProto:
        """Calibrate (MinMax) and return the model with the nodes ``exclude`` left in float."""
        reader = _reader(batches)
        model = self._quantize(reader, exclude)
        if reader.count == 0:
            raise ConvertError(f"calibration source {source} yielded no frames")
        return model

    def quantize(self, exclude: Sequence[str]) -> onnx.ModelProto:
        """The model with the nodes ``exclude`` left in float, from the cached ranges."""
        if not self.cache.is_file():
            raise RuntimeError("quantize() before calibrate()")
        return self._quantize(None, exclude)

    def _quantize(self, reader: Any, exclude: Sequence[str]) -> onnx.ModelProto:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        with quiet():
            quantize_static(
                self.source, self.output, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(exclude),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                calibration_cache_path=self.cache,
            )
        return onnx.load(str(self.output))


def _reader(batches: Callable[[], Iterator[np.ndarray]]) -> Any:
    """onnxruntime's CalibrationDataReader over ``batches()``; ``.count`` = batches read."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.count = 0
            self._it = batches()

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            if batch is None:
                return None
            self.count += 1
            return {INPUT_NAME: batch}

        def rewind(self) -> None:
            self._it = batches()

    return Reader()


@dataclass(frozen=True)
class _ActivationQuantizer:
    """A QuantizeLinear/DequantizeLinear pair on an activation, and the nodes that ask for it."""

    tensor: str
    #: Rounding noise power relative to the signal, ``|DQ(Q(x)) - x|^2 / |x|^2``, on the ranking frames.
    noise: float
    #: The tensor's producer and consumers: left in float, they no longer ask for the pair.
    nodes: tuple[str, ...]


def _rank_quantizers(qdq: onnx.ModelProto, batches: Sequence[np.ndarray],
                     threads: int | None) -> list[_ActivationQuantizer]:
    """The activation quantizers of ``qdq``, the noisiest (relative to their signal) first.

    Reductions are added to a copy of the graph (``ReduceSumSquare(DQ(Q(x)) - x)`` and
    ``ReduceSumSquare(x)`` per pair), so one run per batch measures every quantizer and only
    scalars leave the session.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pairs: list[tuple[str, tuple[str, ...]]] = []
    for dq in list(graph.node):
        if dq.op_type != "DequantizeLinear" or dq.input[0] in initializers:
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        pre, post = q.input[0], dq.output[0]
        asking = [producers[pre]] if pre in producers else []
        asking += [c for c in consumers.get(post, ())
                   if c.op_type not in ("QuantizeLinear", "DequantizeLinear")]
        i = len(pairs)
        graph.node.extend([
            helper.make_node("Sub", [post, pre], [f"edgedet_rank_diff_{i}"], name=f"edgedet_rank_diff_{i}"),
            helper.make_node("ReduceSumSquare", [f"edgedet_rank_diff_{i}"], [f"edgedet_rank_noise_{i}"],
                             name=f"edgedet_rank_noise_{i}", keepdims=0),
            helper.make_node("ReduceSumSquare", [pre], [f"edgedet_rank_signal_{i}"],
                             name=f"edgedet_rank_signal_{i}", keepdims=0),
        ])
        graph.output.extend([helper.make_tensor_value_info(f"edgedet_rank_{kind}_{i}", TensorProto.FLOAT, [])
                             for kind in ("noise", "signal")])
        pairs.append((pre, tuple(dict.fromkeys(n.name for n in asking if n.name))))
    if not pairs:
        return []
    session = _session(model, threads)
    names = [f"edgedet_rank_{kind}_{i}" for kind in ("noise", "signal") for i in range(len(pairs))]
    sums = np.zeros(len(names), dtype=np.float64)
    for batch in batches:
        sums += np.asarray(session.run(names, {INPUT_NAME: batch}), dtype=np.float64)
    noise, signal = sums[:len(pairs)], sums[len(pairs):]
    ratio = np.where(signal > 0, noise / np.maximum(signal, np.finfo(np.float64).tiny), 0.0)
    order = sorted(range(len(pairs)), key=lambda i: (-ratio[i], i))
    return [_ActivationQuantizer(pairs[i][0], float(ratio[i]), pairs[i][1]) for i in order]


def _session(model: onnx.ModelProto, threads: int | None) -> Any:
    """An onnxruntime CPU session with the runtime backend's settings."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # no warnings about unused initializers and the like
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _record(model: onnx.ModelProto, report: int8.Int8Report) -> None:
    """Store the accuracy-aware search's float compute nodes and report (without timings: the same
    inputs give the same file) in ``model.metadata_props``."""
    ops = {node.name: node.op_type for node in model.graph.node}
    layers = [name for name in report.float_layers if ops.get(name) not in _DATA_MOVEMENT]
    entries = {FLOAT_LAYERS_KEY: json.dumps(layers),
               REPORT_KEY: json.dumps(report.record(), sort_keys=True)}
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def recorded(model: onnx.ModelProto) -> tuple[tuple[str, ...], dict[str, Any] | None]:
    """What an accuracy-aware INT8 search recorded in ``model``: (float nodes, figures or None)."""
    props = {p.key: p.value for p in model.metadata_props}
    layers = tuple(json.loads(props[FLOAT_LAYERS_KEY])) if FLOAT_LAYERS_KEY in props else ()
    report = json.loads(props[REPORT_KEY]) if REPORT_KEY in props else None
    return layers, report



def _input_size(fp32: onnx.ModelProto) -> int:
    return fp32.graph.input[0].type.tensor_type.shape.dim[2].dim_value



def _save(model: onnx.ModelProto, path: Path) -> None:
    # One file, written under its final name inside the staging directory (the directory is
    # published atomically by the pipeline).
    path.write_bytes(model.SerializeToString())


def _value_info(value: Any) -> tuple[str, tuple[int, ...]]:
    t = value.type.tensor_type
    dtype = _DTYPES.get(t.elem_type)
    shape = tuple(d.dim_value for d in t.shape.dim)
    if dtype is None or not all(shape):
        raise ConvertError(f"ONNX tensor {value.name!r} has unsupported type {t.elem_type} or a dynamic "
                           f"shape {shape}")
    return dtype, shape


def _float_layers(model: onnx.ModelProto, precision: str) -> tuple[str, ...]:
    """Compute nodes that run in float32 in a reduced-precision model.

    int8 (QDQ): a compute node counts as quantized when its first input comes from a
    DequantizeLinear and so do its weights (a float initializer as second input is float
    weights); the nodes an accuracy-aware search left in float (recorded in the model, see
    :func:`recorded`) are listed too, in graph order. fp16: when its first input is float16
    (nodes behind casts are float).
    """
    if precision == "fp32":
        return ()
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    # The frame front end (converters.frame_input) is input preprocessing, always float32: not a layer.
    front = {node.name for node in graph.node if node.name.startswith(frame_input.FRONT_END_PREFIX)}
    if precision == "int8":
        float_initializers = {t.name for t in graph.initializer if t.data_type in (1, 10)}
        excluded = set(recorded(model)[0])
        left = []
        for node in graph.node:
            if node.op_type in _DATA_MOVEMENT or not node.input or node.name in front:
                continue
            src = producers.get(node.input[0])
            float_weights = len(node.input) > 1 and node.input[1] in float_initializers
            if src is None or src.op_type != "DequantizeLinear" or float_weights or node.name in excluded:
                left.append(node.name or node.op_type)
        return tuple(left)
    # fp16: nodes fed by a Cast to float32 (elem type 1) are the blocked ones.
    left = []
    for node in graph.node:
        if node.op_type in _DATA_MOVEMENT or not node.input or node.name in front:
            continue
        src = producers.get(node.input[0])
        if src is not None and src.op_type == "Cast" and any(
                a.name == "to" and a.i == 1 for a in src.attribute):
            left.append(node.name or node.op_type)
    return tuple(left)


