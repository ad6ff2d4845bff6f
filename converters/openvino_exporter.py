"""OpenVINO IR artifacts (``model.xml`` + ``model.bin``): FP32, FP16 and INT8 (NNCF).

Every precision starts from the same FP32 ONNX graph as the ONNX artifacts
(:func:`converters.onnx_exporter.export_fp32`), converted with ``ov.convert_model`` (faster and
more robust than converting the torch module, docs/TOOLCHAIN.md). Convolutions are renamed after their
weights (``box_net.conv_rep.0.conv_dw[2]``: the third use of a shared head weight) so that logs,
``ignored_scope`` and the manifest's ``float_layers`` name real layers. Input ``images``: by
default (``input_kind="frame"``) the uint8 frame canvas [1,R,R,3] (NHWC, BGR), the finished model
of every precision put behind OpenVINO's PrePostProcessor (:func:`converters.frame_input.openvino_frame_input`);
with ``input_kind="tensor"`` [1,3,R,R] float32 (normalized, NCHW). Outputs ``cls_logits`` [1,N,C],
``box_regression`` [1,N,4], float32 at every precision.

* **fp32**: ``ov.save_model(..., compress_to_fp16=False)``.
* **fp16**: ``compress_to_fp16=True``: float16 weights, decompressed on load, computed at the
  CPU inference precision (see below). Half the file, the speed of FP32.
* **int8**: ``nncf.quantize`` (preset MIXED: symmetric per-channel int8 weights, asymmetric
  activations, fast bias correction; ``model_type`` left unset, that is a CNN) calibrated on frames
  preprocessed by :func:`edgedet.preprocess.preprocess`. MIXED beat PERFORMANCE on both variants
  (see ``tests/test_convert_openvino.py`` for the figures). By default **accuracy-aware**, by
  :mod:`converters.int8`. This module's recipe (:class:`_OpenVinoRecipe`): the units are the
  activation quantizers (FakeQuantize), left in float with
  ``nncf.quantize(..., ignored_scope=nncf.IgnoredScope(names=...))`` over the layers they feed.
  They are ranked coarse to fine by how much the shortfall shrinks when each is bypassed, on a
  "switchable" copy of the quantized model compiled once (a boolean input per quantizer selects
  its output or its input, so ranking needs no recompilation): blocks of consecutive quantizers
  first, then the quantizers of the blocks needed; the emulation also tells the search from how
  many units to start. The layers left in float and the report are stored in the IR
  (``rt_info``) and listed in the manifest's ``float_layers``. NNCF's
  ``quantize_with_accuracy_control`` ranks the same way but recompiles the model for every
  quantizer group (2-4 s each here, 200-330 groups): tens of minutes for D0 on two cores, hence
  the switchable model.

Verification runs the runtime's own :class:`edgedet.backends.openvino.OpenVinoBackend` at the
CPU inference precision of :data:`OpenVinoExporter.verify_precisions`: every precision with
``INFERENCE_PRECISION_HINT=f32``, which is what the runtime backend uses (at the plug-in's default,
bf16 on CPUs with AVX-512 BF16, FP32 IR misses the FP32 parity limits and FP16 the FP16 ones), so
an artifact is verified at the precision it is served at. What each precision ran at is recorded in
the manifest's ``options`` (``inference_precision``), and the accuracy-aware search measures
agreement at that same precision.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters import frame_input, int8
from converters.accuracy import AccuracyTarget, Agreement, Outputs
from converters.base import ArtifactIO, ConvertError, Exporter, Runner, register_exporter
from converters.fp32_cache import Fp32Cache
from converters.onnx_exporter import INPUT_NAME, OUTPUT_NAMES, export_fp32, forget_fp32, fp32_bytes, seed_fp32
from converters.quiet import quiet
from edgedet.manifest import InputSpec, NormalizationSpec, OutputSpec

if TYPE_CHECKING:
    from converters.calibration import Calibration
    from edgedet.config import ModelConfig

__all__ = ["OpenVinoExporter", "OpenVinoIO"]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.xml"
#: Where the exporter stores what it did inside the IR (``model.get_rt_info([RT_KEY, ...])``).
RT_KEY = "edgedet"
#: The ranking's first, coarse pass cuts the quantizers into this many consecutive blocks.
RANKING_BLOCKS = 16

_DTYPES = {"f32": "float32", "f16": "float16", "u8": "uint8", "i8": "int8"}
#: Ops that carry weights: what "a layer" means in ``float_layers``.
_WEIGHTED = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData",
             "GroupConvolutionBackpropData"}
#: Ops between a weight constant (or a quantizer) and the layer using it.
_WEIGHT_PATH = {"Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Subtract", "Multiply"}
#: Ops that only move or pick data: a quantizer's "consumers" are found through them.
_AGNOSTIC = {"Pad", "MaxPool", "Interpolate", "Reshape", "Transpose", "Concat", "Squeeze", "Unsqueeze",
             "Split", "VariadicSplit", "StridedSlice", "Slice", "Gather", "Convert", "Broadcast"}


# ------------------------------------------------------------------------------------ exporter


@dataclass(frozen=True)
class OpenVinoIO(ArtifactIO):
    """:class:`ArtifactIO` plus the CPU inference precision the artifact is verified at
    (``None``: the plug-in's default)."""

    inference_precision: str | None = "f32"


@register_exporter
class OpenVinoExporter(Exporter):
    """OpenVINO IR for the CPU plug-in: the uint8 frame canvas or the NCHW float32 tensor in, float32
    outputs, at every precision.

    Args:
        input_kind: ``"frame"`` (default): the uint8 BGR canvas, preprocessed inside the model;
            ``"tensor"``: the normalized float32 NCHW tensor.
        threads: inference threads for the parity check (default: the plug-in's choice).
        accuracy_aware: leave the layers whose quantization hurts most in float until INT8 reaches
            ``accuracy_target`` (default; see :mod:`converters.int8`); ``False`` makes a fully
            quantized INT8 model.
        accuracy_target: the agreement accuracy-aware INT8 must reach; ``None`` = fully quantized.
        preset: NNCF quantization preset, ``"mixed"`` (default) or ``"performance"``.
    """

    name = "openvino"
    backend = "openvino"
    precisions = ("fp32", "fp16", "int8")
    requires = {"onnx": "onnx", "onnxscript": "onnxscript", "onnxslim": "onnxslim",
                "openvino": "openvino", "nncf": "nncf"}
    revision = 3  # 3: frame input (converters.frame_input)
    fp32_kind = "onnx"  # converted from the ONNX exporter's FP32 graph
    input_kinds = frame_input.INPUT_KINDS
    #: ``INFERENCE_PRECISION_HINT`` each precision is verified with; ``None`` = the plug-in's default.
    verify_precisions: dict[str, str | None] = {"fp32": "f32", "fp16": "f32", "int8": "f32"}

    def __init__(self, *, threads: int | None = None, accuracy_aware: bool = True,
                 accuracy_target: AccuracyTarget | None = AccuracyTarget(),
                 preset: str = "mixed", input_kind: str = frame_input.DEFAULT_INPUT) -> None:
        if preset not in ("mixed", "performance"):
            raise ValueError(f"preset must be 'mixed' or 'performance', not {preset!r}")
        self.input_kind = frame_input.check_input_kind(input_kind)
        self.threads = threads
        self.accuracy_target = accuracy_target if accuracy_aware else None
        self.preset = preset
        self._fp32: Fp32Cache[Any] = Fp32Cache(size=1)  # ov.Model
        #: What the last accuracy-aware INT8 export did, for logs and tests.
        self.last_int8: int8.Int8Report | None = None

    def options(self, precision: str) -> dict[str, str]:
        """The input (frame or tensor), the CPU inference precision the artifact is verified (and
        served) at, and for INT8 the NNCF preset and full or accuracy-aware with its target."""
        opts = {"input": self.input_kind,
                "inference_precision": self.verify_precisions[precision] or _plugin_default_precision()}
        if precision == "int8":
            opts.update(preset=self.preset, **int8.int8_options(self.accuracy_target))
        return opts

    # ------------------------------------------------------------------------------ export

    def export(self, model: Any, config: ModelConfig, out_dir: Path, precision: str,
               calibration: Calibration | None) -> list[Path]:
        import openvino as ov

        self.check_request(precision, calibration)
        fp32 = self._fp32.get(model, config, lambda: _convert(model, config))
        path = Path(out_dir) / MODEL_FILE
        if precision == "fp32":
            out, compress = fp32.clone(), False
        elif precision == "fp16":
            out, compress = fp32.clone(), True
        else:
            recipe = _OpenVinoRecipe(fp32, _Batches(calibration, config), self.preset,
                                     self.verify_precisions["int8"])
            result = int8.quantize(recipe, self.accuracy_target, model, calibration)
            self.last_int8 = result.report
            out, compress = result.model, False  # float layers stay float32 in the file
            out.set_rt_info(json.dumps(list(result.float_layers)), [RT_KEY, "float_layers"])
            if result.report:  # without timings: the same inputs give the same files
                out.set_rt_info(json.dumps(result.report.record(), sort_keys=True), [RT_KEY, "accuracy_aware"])
        out.set_rt_info(precision, [RT_KEY, "precision"])
        if self.input_kind == "frame":
            out = frame_input.openvino_frame_input(out, NormalizationSpec.from_config(config.normalization))
        ov.save_model(out, str(path), compress_to_fp16=compress)
        return [path, path.with_suffix(".bin")]

    def fp32_graph(self, model: Any, config: ModelConfig) -> bytes:
        return fp32_bytes(model, config)

    def seed_fp32(self, model: Any, config: ModelConfig, graph: bytes) -> None:
        seed_fp32(model, config, graph)

    def release(self) -> None:
        self._fp32.clear()
        forget_fp32()

    # ------------------------------------------------------------------------------ inspect / run

    def describe(self, files: Sequence[Path], config: ModelConfig, precision: str) -> ArtifactIO:
        import openvino as ov

        xml = Path(files[0])
        try:
            model = ov.Core().read_model(str(xml), str(xml.with_suffix(".bin")))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError for everything
            raise ConvertError(f"OpenVINO cannot read {xml}: {str(exc).splitlines()[0][:200]}") from exc
        if len(model.inputs) != 1:
            raise ConvertError(f"expected one input, the IR has {len(model.inputs)}")
        inp = model.inputs[0]
        dtype, shape = _port_info(inp)
        normalization = NormalizationSpec.from_config(config.normalization)
        if inp.get_any_name() == INPUT_NAME and dtype == "uint8" and len(shape) == 4 and shape[3] == 3:
            input_spec = frame_input.frame_spec(INPUT_NAME, shape[1], normalization, batch=shape[0])
        elif inp.get_any_name() != INPUT_NAME or len(shape) != 4 or shape[1] != 3:
            raise ConvertError(f"unexpected OpenVINO input {inp.get_any_name()!r} {shape}")
        else:
            input_spec = InputSpec(name=inp.get_any_name(), shape=shape, layout="NCHW", dtype=dtype,
                                   normalization=normalization, color="RGB", quantization=None)
        outputs = []
        for out in model.outputs:
            dtype, shape = _port_info(out)
            name = out.get_any_name()
            if name not in OUTPUT_NAMES:
                raise ConvertError(f"unexpected OpenVINO output {name!r}")
            outputs.append(OutputSpec(name=name, role=name, shape=shape, dtype=dtype))
        return OpenVinoIO(input=input_spec, outputs=tuple(outputs),
                          float_layers=_float_layers(model, precision),
                          inference_precision=self.verify_precisions.get(precision, "f32"))

    def runner(self, files: Sequence[Path], io: ArtifactIO) -> Runner:
        from edgedet.backends.openvino import OpenVinoBackend

        precision = io.inference_precision if isinstance(io, OpenVinoIO) else "f32"
        backend = OpenVinoBackend(files[0], threads=self.threads, inference_precision=precision)
        names = {o.role: o.name for o in io.outputs}
        cls_name, box_name = names["cls_logits"], names["box_regression"]
        np_dtype = np.dtype(io.input.dtype)

        def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            out = backend.run(np.ascontiguousarray(batch, dtype=np_dtype))
            return np.asarray(out[cls_name], np.float32), np.asarray(out[box_name], np.float32)

        return run


def _convert(model: Any, config: ModelConfig) -> Any:
    """The FP32 ov.Model, converted from the FP32 ONNX graph, layers named after their weights."""
    import openvino as ov

    proto = export_fp32(model, config)
    with tempfile.TemporaryDirectory(prefix="edgedet-ov-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx_path.write_bytes(proto.SerializeToString())
        with quiet():
            converted = ov.convert_model(str(onnx_path))
    _name_layers_after_weights(converted, proto)
    return converted


# ---------------------------------------------------------------------------------- INT8


class _OpenVinoRecipe:
    """The OpenVINO recipe of :mod:`converters.int8`: ``nncf.quantize`` with an ``IgnoredScope``,
    units = activation quantizers ranked on a switchable model, candidates compiled at the
    inference precision they are served at."""

    def __init__(self, fp32: Any, calibration: _Batches, preset: str, inference_precision: str | None) -> None:
        self.fp32, self.calibration, self.preset = fp32, calibration, preset
        self.inference_precision = inference_precision

    def quantize(self, float_members: Sequence[str]) -> Any:
        return _nncf_quantize(self.fp32, self.calibration, self.preset, ignored=float_members)

    def run(self, candidate: Any, batches: Sequence[np.ndarray]) -> list[Outputs]:
        compiled = _compile(candidate, self.inference_precision)
        return [_run(compiled, b) for b in batches]

    def rank(self, full: Any, agreement: Agreement, trial: int8.Trial) -> int8.Ranking:
        """Coarse to fine on the switchable model: the quantizers (in graph order) are cut into
        :data:`RANKING_BLOCKS` consecutive blocks, each block bypassed alone (on the ranking frames)
        and the blocks ranked by the shortfall that leaves; the fewest top-ranked blocks that meet
        the goal (emulated, on all validation frames) are found; then the quantizers of those blocks
        are ranked the same way one by one, and the emulated smallest count is where the search
        starts (the real model is rarely better than its emulation)."""
        switch = _SwitchableModel(full, self.inference_precision)
        goal = agreement.target.headroom

        def emulated(bypassed: Sequence[int], batches: Sequence[np.ndarray]) -> float:
            return agreement.shortfall(switch.run(bypassed, batches))

        def ranked(groups: list[list[int]]) -> list[list[int]]:
            scores = [emulated(g, agreement.ranking_batches) for g in groups]
            return [groups[j] for j in sorted(range(len(groups)), key=lambda j: (scores[j], j))]

        def fewest(order: list[list[int]]) -> int | None:
            return int8.smallest_passing(
                lambda n: emulated([i for g in order[:n] for i in g], agreement.batches), len(order), goal)[0]

        if not switch.size:
            return int8.Ranking(())
        blocks = ranked([list(b) for b in np.array_split(np.arange(switch.size), min(RANKING_BLOCKS, switch.size))])
        needed = fewest(blocks)
        if needed is None:  # even every quantizer bypassed misses: the search will confirm that once
            order, start = [i for b in blocks for i in b], switch.size
        else:
            members = [i for b in blocks[:needed] for i in b]
            order = [g[0] for g in ranked([[i] for i in members])]
            start = fewest([[i] for i in order]) or len(order)
            order += [i for b in blocks[needed:] for i in b]
        known = {op.get_friendly_name() for op in self.fp32.get_ops()}
        units = tuple(int8.Unit(switch.names[i], tuple(n for n in switch.consumers([i]) if n in known))
                      for i in order)
        return int8.Ranking(units, start=start)


def _nncf_quantize(fp32: Any, calibration: Iterable[np.ndarray], preset: str,
                   ignored: Sequence[str] = ()) -> Any:
    import nncf

    count = len(calibration) if hasattr(calibration, "__len__") else sum(1 for _ in calibration)
    if count == 0:
        raise ConvertError("the calibration source yielded no frames")
    kwargs: dict[str, Any] = {}
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(ignored))
    with quiet():
        return nncf.quantize(
            fp32, nncf.Dataset(calibration), preset=nncf.QuantizationPreset(preset),
            subset_size=count, fast_bias_correction=True, **kwargs)


class _SwitchableModel:
    """A copy of a quantized model in which every activation quantizer can be bypassed at run time
    (an extra boolean input, one flag per quantizer: 1 = quantize, 0 = pass the float value), so
    that ranking and search need one compilation instead of one per candidate."""

    def __init__(self, quantized: Any, inference_precision: str | None) -> None:
        import openvino as ov
        import openvino.opset15 as ops

        model = quantized.clone()
        self.quantizers = [op for op in model.get_ordered_ops()
                           if op.get_type_name() == "FakeQuantize" and not _from_constant(op.input_value(0))]
        self.size = len(self.quantizers)
        self.names = [q.get_friendly_name() for q in self.quantizers]
        self._consumers = [_quantized_consumers(q) for q in self.quantizers]
        flags = ops.parameter([self.size], ov.Type.boolean, name="edgedet_quantizer_flags")
        axis = ops.constant(np.int64(0))
        for i, fq in enumerate(self.quantizers):
            targets = list(fq.output(0).get_target_inputs())
            flag = ops.gather(flags, ops.constant(np.int64(i)), axis)
            chosen = ops.select(flag, fq.output(0), fq.input_value(0))
            for target in targets:
                target.replace_source_output(chosen.output(0))
        model.add_parameters([flags])
        self.compiled = _compile(model, inference_precision)
        self.request = self.compiled.create_infer_request()
        outputs = {o.get_any_name(): o for o in self.compiled.outputs}
        self._cls, self._box = outputs["cls_logits"], outputs["box_regression"]

    def run(self, bypassed: Sequence[int], batches: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Outputs on ``batches`` with the quantizers ``bypassed`` passing float values."""
        flags = np.ones(self.size, dtype=bool)
        flags[list(bypassed)] = False
        outputs = []
        for batch in batches:
            result = self.request.infer({0: batch, 1: flags})
            outputs.append((np.array(result[self._cls], copy=True), np.array(result[self._box], copy=True)))
        return outputs

    def consumers(self, indices: Sequence[int]) -> tuple[str, ...]:
        """The layers (friendly names, in graph order) fed by quantizers ``indices``: the
        ``ignored_scope`` that keeps those quantizers out."""
        chosen = {name for i in indices for name in self._consumers[i]}
        order = [name for names in self._consumers for name in names]
        return tuple(dict.fromkeys(n for n in order if n in chosen))


class _Batches:
    """A re-iterable, sized view of the calibration batches (NNCF iterates more than once)."""

    def __init__(self, calibration: Calibration, config: ModelConfig) -> None:
        self.calibration, self.config = calibration, config
        self._len: int | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        norm = self.config.normalization
        return self.calibration.batches(self.config.image_size, norm.mean, norm.std, layout="NCHW",
                                        dtype=np.float32)

    def __len__(self) -> int:
        if self._len is None:
            self._len = self.calibration.source.calibration_count(self.calibration.count)
        return self._len


def _compile(model: Any, inference_precision: str | None) -> Any:
    import openvino as ov

    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if inference_precision:
        config["INFERENCE_PRECISION_HINT"] = inference_precision
    return ov.Core().compile_model(model, "CPU", config)


def _run(compiled: Any, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    result = compiled({0: batch})
    outputs = {o.get_any_name(): o for o in compiled.outputs}
    return (np.array(result[outputs["cls_logits"]], copy=True),
            np.array(result[outputs["box_regression"]], copy=True))


def _plugin_default_precision() -> str:
    import openvino as ov

    try:
        return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    except Exception:  # noqa: BLE001 - no CPU plug-in: nothing to record
        return "unknown"


def _port_info(port: Any) -> tuple[str, tuple[int, ...]]:
    shape = port.get_partial_shape()
    dtype = _DTYPES.get(port.get_element_type().get_type_name())
    if dtype is None or shape.is_dynamic:
        raise ConvertError(f"OpenVINO tensor {port.get_any_name()!r} has unsupported type "
                           f"{port.get_element_type()} or a dynamic shape {shape}")
    return dtype, tuple(int(d) for d in shape.to_shape())


def _source(value: Any, through: set[str]) -> Any:
    """The node ``value`` comes from, looking through ops of the types ``through`` (first input)."""
    node = value.get_node()
    while node.get_type_name() in through and node.get_input_size() > 0:
        node = node.input_value(0).get_node()
    return node


def _from_constant(value: Any) -> bool:
    return _source(value, {"Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze"}).get_type_name() == "Constant"


def _weight_constant(op: Any) -> Any | None:
    if op.get_input_size() < 2:
        return None
    node = _source(op.input_value(1), _WEIGHT_PATH | {"FakeQuantize"})
    return node if node.get_type_name() == "Constant" else None


def _quantized_consumers(fq: Any) -> list[str]:
    """Names of the layers a quantizer feeds, looking through data-movement ops."""
    names: list[str] = []
    seen: set[int] = set()
    stack = [fq.output(0)]
    while stack:
        for target in stack.pop().get_target_inputs():
            node = target.get_node()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.get_type_name() in _AGNOSTIC | {"Select"}:
                stack.extend(node.outputs())
            elif node.get_type_name() not in ("Result", "FakeQuantize"):
                names.append(node.get_friendly_name())
    return names


def _name_layers_after_weights(model: Any, proto: Any) -> None:
    """Rename weighted layers after their weights in the ONNX graph ``proto``
    (``backbone.blocks.1.0.conv_dw``; a weight used by several layers, as the heads' are across
    levels, gets ``[k]``), and their bias additions ``<name>/bias``. ONNX node names
    (``node_Conv_1820``) mean nothing to a reader of ``float_layers``; layers whose weights have no
    module name (batch norms folded at export) keep the node's name."""
    weights = {node.name: node.input[1] for node in proto.graph.node
               if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and len(node.input) > 1}
    layers = [op for op in model.get_ordered_ops() if op.get_type_name() in _WEIGHTED]
    suffix = "/WithoutBiases"
    bases = []
    for op in layers:
        name = op.get_friendly_name()
        weight = weights.get(name[:-len(suffix)] if name.endswith(suffix) else name, "")
        bases.append(weight[:-len(".weight")] if weight.endswith(".weight") else None)
    uses: dict[str, int] = {}
    for base in bases:
        if base:
            uses[base] = uses.get(base, 0) + 1
    taken = {op.get_friendly_name() for op in model.get_ordered_ops()}
    seen: dict[str, int] = {}
    for op, base in zip(layers, bases):
        if not base:
            continue
        k = seen.get(base, 0)
        seen[base] = k + 1
        new = base if uses[base] == 1 else f"{base}[{k}]"
        if new in taken or f"{new}/bias" in taken:
            continue
        old = op.get_friendly_name()
        op.set_friendly_name(new)
        taken.add(new)
        targets = list(op.output(0).get_target_inputs())
        if old.endswith(suffix) and len(targets) == 1:
            bias = targets[0].get_node()
            if bias.get_type_name() == "Add" and bias.get_friendly_name() == old[:-len(suffix)]:
                bias.set_friendly_name(f"{new}/bias")
                taken.add(f"{new}/bias")


def _float_layers(model: Any, precision: str) -> tuple[str, ...]:
    """Weighted layers computed in floating point in a reduced-precision IR.

    int8: a layer counts as quantized when its activation input comes from a FakeQuantize and its
    weights are integer constants (or quantized); the layers an accuracy-aware search left in float
    are also recorded in the IR and listed even when they carry no weights (an addition).
    fp16: layers whose weights are not stored in float16.
    """
    if precision == "fp32":
        return ()
    layers = [op for op in model.get_ordered_ops() if op.get_type_name() in _WEIGHTED]
    left = []
    for op in layers:
        const = _weight_constant(op)
        weight_type = const.get_element_type().get_type_name() if const is not None else "f32"
        if precision == "fp16":
            if weight_type != "f16":
                left.append(op.get_friendly_name())
            continue
        act_quantized = _source(op.input_value(0), _AGNOSTIC).get_type_name() == "FakeQuantize"
        weight_node = _source(op.input_value(1), {"Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze"}) \
            if op.get_input_size() > 1 else None
        weights_quantized = weight_type in ("i8", "u8", "i4", "u4") or (
            weight_node is not None and weight_node.get_type_name() in ("FakeQuantize", "Multiply", "Subtract"))
        if not (act_quantized and weights_quantized):
            left.append(op.get_friendly_name())
    if precision == "int8" and model.has_rt_info([RT_KEY, "float_layers"]):
        recorded = json.loads(model.get_rt_info([RT_KEY, "float_layers"]).astype(str))
        left.extend(name for name in recorded if name not in left)
    return tuple(left)
