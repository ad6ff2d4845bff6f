"""OpenVINO IR artifacts (``model.xml`` + ``model.bin``): FP32, FP16 and INT8 (NNCF).

Every precision starts from the same FP32 ONNX graph as the ONNX artifacts
(:func:`converters.onnx_exporter.export_fp32`), converted with ``ov.convert_model`` (faster and
more robust than converting the torch module, STACK.md). Convolutions are renamed after their
weights (``box_net.conv_rep.0.conv_dw[2]``: the third use of a shared head weight) so that logs,
``ignored_scope`` and the manifest's ``float_layers`` name real layers. Input ``images``
[1,3,R,R] float32 (normalized, NCHW); outputs ``cls_logits`` [1,N,C], ``box_regression`` [1,N,4],
float32 at every precision.

* **fp32**: ``ov.save_model(..., compress_to_fp16=False)``.
* **fp16**: ``compress_to_fp16=True``: float16 weights, decompressed on load, computed at the
  CPU inference precision (see below). Half the file, the speed of FP32.
* **int8**: ``nncf.quantize`` (preset MIXED: symmetric per-channel int8 weights, asymmetric
  activations, fast bias correction; ``model_type`` left unset, that is a CNN) calibrated on frames
  preprocessed by :func:`edgedet.preprocess.preprocess`. MIXED beat PERFORMANCE on both variants
  (see ``tests/test_convert_openvino.py`` for the figures). Then, by default, **accuracy-aware**
  (:class:`AccuracyTarget`): if the outputs do not agree with FP32 to the target cosines (with
  10% headroom) on frames held out from both calibration and the parity check, the activation
  quantizers are ranked by how much the shortfall shrinks when each one is bypassed (coarse to
  fine: blocks of consecutive quantizers first, then the quantizers of the blocks needed), on a
  "switchable" copy of the quantized model compiled once (a boolean input per quantizer selects
  its output or its input, so ranking needs no recompilation); the fewest top-ranked quantizers
  that meet the target are found (doubling, then bisection), and the model is quantized again
  with ``nncf.quantize(..., ignored_scope=nncf.IgnoredScope(names=...))`` over the layers they
  feed, then confirmed on the real compiled model (more are left out if the emulation was
  optimistic). The layers left in float are stored in the IR (``rt_info``) and listed in the
  manifest's ``float_layers``. NNCF's ``quantize_with_accuracy_control`` ranks the same way but
  recompiles the model for every quantizer group (2-4 s each here, 200-330 groups): tens of
  minutes for D0 on two cores, hence the switchable model.

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
import math
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.accuracy import AccuracyTarget, cosine, validation_frames
from converters.base import ArtifactIO, ConvertError, Exporter, Runner, register_exporter
from converters.onnx_exporter import INPUT_NAME, OUTPUT_NAMES, export_fp32, forget_fp32, fp32_key, quiet
from edgedet.manifest import InputSpec, NormalizationSpec, OutputSpec

if TYPE_CHECKING:
    from converters.calibration import Calibration
    from edgedet.config import ModelConfig

__all__ = ["AccuracyTarget", "Int8Result", "OpenVinoExporter", "OpenVinoIO", "quantize_int8"]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.xml"
#: Where the exporter stores what it did inside the IR (``model.get_rt_info([RT_KEY, ...])``).
RT_KEY = "edgedet"

_DTYPES = {"f32": "float32", "f16": "float16", "u8": "uint8", "i8": "int8"}
#: Ops that carry weights: what "a layer" means in ``float_layers``.
_WEIGHTED = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData",
             "GroupConvolutionBackpropData"}
#: Ops between a weight constant (or a quantizer) and the layer using it.
_WEIGHT_PATH = {"Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Subtract", "Multiply"}
#: Ops that only move or pick data: a quantizer's "consumers" are found through them.
_AGNOSTIC = {"Pad", "MaxPool", "Interpolate", "Reshape", "Transpose", "Concat", "Squeeze", "Unsqueeze",
             "Split", "VariadicSplit", "StridedSlice", "Slice", "Gather", "Convert", "Broadcast"}


# ------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class OpenVinoIO(ArtifactIO):
    """:class:`ArtifactIO` plus the CPU inference precision the artifact is verified at
    (``None``: the plug-in's default)."""

    inference_precision: str | None = "f32"


@dataclass
class Int8Result:
    """What :func:`quantize_int8` made."""

    model: Any  # ov.Model
    float_layers: tuple[str, ...] = ()
    #: Figures of the accuracy-aware search (empty when it did not run), for logs and tests.
    report: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ exporter


@register_exporter
class OpenVinoExporter(Exporter):
    """OpenVINO IR for the CPU plug-in, NCHW float32 I/O at every precision.

    Args:
        threads: inference threads for the parity check (default: the plug-in's choice).
        accuracy_aware: leave the layers whose quantization hurts most in float until INT8 reaches
            ``accuracy_target`` (default; see the module doc); ``False`` makes a fully quantized
            INT8 model.
        accuracy_target: the agreement accuracy-aware INT8 must reach; ``None`` = fully quantized.
        preset: NNCF quantization preset, ``"mixed"`` (default) or ``"performance"``.
    """

    name = "openvino"
    backend = "openvino"
    precisions = ("fp32", "fp16", "int8")
    requires = {"onnx": "onnx", "onnxscript": "onnxscript", "onnxslim": "onnxslim",
                "openvino": "openvino", "nncf": "nncf"}
    revision = 1
    #: ``INFERENCE_PRECISION_HINT`` each precision is verified with; ``None`` = the plug-in's default.
    verify_precisions: dict[str, str | None] = {"fp32": "f32", "fp16": "f32", "int8": "f32"}

    def __init__(self, *, threads: int | None = None, accuracy_aware: bool = True,
                 accuracy_target: AccuracyTarget | None = AccuracyTarget(),
                 preset: str = "mixed") -> None:
        if preset not in ("mixed", "performance"):
            raise ValueError(f"preset must be 'mixed' or 'performance', not {preset!r}")
        self.threads = threads
        self.accuracy_target = accuracy_target if accuracy_aware else None
        self.preset = preset
        self._cache_key: tuple | None = None
        self._cache: Any = None  # the FP32 ov.Model

    def options(self, precision: str) -> dict[str, str]:
        """The CPU inference precision the artifact is verified (and served) at, and for INT8 the
        NNCF recipe: preset and full or accuracy-aware with its target."""
        opts = {"inference_precision": self.verify_precisions[precision] or _plugin_default_precision()}
        if precision == "int8":
            target = self.accuracy_target
            opts.update(preset=self.preset, int8_mode="accuracy-aware" if target else "full")
            if target:
                opts["accuracy_target"] = target.describe()
        return opts

    # ------------------------------------------------------------------------------ export

    def export(self, model: Any, config: ModelConfig, out_dir: Path, precision: str,
               calibration: Calibration | None) -> list[Path]:
        import openvino as ov

        self.check_request(precision, calibration)
        fp32 = self._fp32_model(model, config)
        path = Path(out_dir) / MODEL_FILE
        if precision == "fp32":
            out, compress = fp32.clone(), False
        elif precision == "fp16":
            out, compress = fp32.clone(), True
        else:
            size = config.image_size
            norm = config.normalization
            batches = _Batches(calibration, size, norm.mean, norm.std)
            validation = None
            if self.accuracy_target is not None:
                frames = validation_frames(calibration, self.accuracy_target.validation_images)
                validation = [_preprocess(f, size, norm.mean, norm.std) for f in frames]
            result = quantize_int8(fp32, batches, preset=self.preset, target=self.accuracy_target,
                                   validation=validation,
                                   inference_precision=self.verify_precisions["int8"])
            out, compress = result.model, False  # float layers stay float32 in the file
            out.set_rt_info(json.dumps(list(result.float_layers)), [RT_KEY, "float_layers"])
            if result.report:  # without timings: the same inputs give the same files
                figures = {k: v for k, v in result.report.items() if not k.endswith("seconds")}
                out.set_rt_info(json.dumps(figures, sort_keys=True), [RT_KEY, "accuracy_aware"])
        out.set_rt_info(precision, [RT_KEY, "precision"])
        ov.save_model(out, str(path), compress_to_fp16=compress)
        return [path, path.with_suffix(".bin")]

    def _fp32_model(self, model: Any, config: ModelConfig) -> Any:
        """The FP32 ov.Model, converted from the FP32 ONNX graph; cached for the other precisions."""
        import openvino as ov

        key = fp32_key(model, config)
        if self._cache_key != key or self._cache is None:
            proto = export_fp32(model, config)
            with tempfile.TemporaryDirectory(prefix="edgedet-ov-") as tmp:
                onnx_path = Path(tmp) / "model.onnx"
                onnx_path.write_bytes(proto.SerializeToString())
                with quiet():
                    converted = ov.convert_model(str(onnx_path))
            _name_layers_after_weights(converted, proto)
            self._cache, self._cache_key = converted, key
        return self._cache

    def release(self) -> None:
        self._cache_key, self._cache = None, None
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
        if inp.get_any_name() != INPUT_NAME or len(shape) != 4 or shape[1] != 3:
            raise ConvertError(f"unexpected OpenVINO input {inp.get_any_name()!r} {shape}")
        input_spec = InputSpec(
            name=inp.get_any_name(), shape=shape, layout="NCHW", dtype=dtype,
            normalization=NormalizationSpec.from_config(config.normalization), color="RGB",
            quantization=None,
        )
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


# ---------------------------------------------------------------------------------- INT8


def quantize_int8(fp32: Any, calibration: Iterable[np.ndarray], *, preset: str = "mixed",
                  target: AccuracyTarget | None = None, validation: Sequence[np.ndarray] | None = None,
                  inference_precision: str | None = None) -> Int8Result:
    """Quantize the FP32 ov.Model ``fp32`` with NNCF, calibrated on the preprocessed batches
    ``calibration`` (re-iterable). With a ``target`` and ``validation`` batches, leave the layers
    whose quantization hurts most in float until the outputs agree with FP32 to the target when run
    at ``inference_precision`` (see the module doc). ``fp32`` is not modified."""
    started = time.perf_counter()
    full = _nncf_quantize(fp32, calibration, preset)
    if target is None or not validation:
        return Int8Result(full)
    search = _AccuracySearch(fp32, target, list(validation), inference_precision)
    goal = target.headroom
    report: dict[str, Any] = {"full_shortfall": _r(search.shortfall_of(full))}
    if report["full_shortfall"] <= goal:
        report["seconds"] = _r(time.perf_counter() - started)
        logger.info("INT8 meets the accuracy target fully quantized (error %.2f of the allowed, aiming at "
                    "<= %.2f)", report["full_shortfall"], goal)
        return Int8Result(full, (), report)

    switch = _SwitchableModel(full, inference_precision)
    order, count, emulated = search.select(switch)
    report.update(quantizers=switch.size, evaluations=search.evaluations,
                  search_seconds=_r(time.perf_counter() - started))
    if count is None:
        logger.warning("INT8 accuracy target %s is out of reach even with every quantizer bypassed "
                       "(shortfall %.3f); keeping the fully quantized model", target.describe(), emulated)
        report.update(unreachable=True, all_bypassed_shortfall=_r(emulated),
                      seconds=_r(time.perf_counter() - started))
        return Int8Result(full, (), report)

    known = {op.get_friendly_name() for op in fp32.get_ops()}
    best: tuple[float, Any, tuple[str, ...], int, float] | None = None
    for _ in range(4):
        names = tuple(n for n in switch.consumers(order[:count]) if n in known)
        model = _nncf_quantize(fp32, calibration, preset, ignored=names)
        shortfall = search.shortfall_of(model)
        logger.info("INT8 with %d of %d quantizers left out (%d layers in float): shortfall %.3f "
                    "(emulated %.3f)", count, switch.size, len(names), shortfall, emulated)
        if best is None or shortfall < best[0]:
            best = (shortfall, model, names, count, emulated)
        if shortfall <= goal or count >= len(order):
            break
        # The emulation was optimistic: leave out more of the ranking.
        count = min(len(order), max(count + 1, math.ceil(count * 1.5)))
        emulated = search.emulated(switch, order[:count])
    shortfall, model, names, count, emulated = best  # type: ignore[misc]
    report.update(left_out_quantizers=count, float_layers=len(names), shortfall=_r(shortfall),
                  emulated_shortfall=_r(emulated), seconds=_r(time.perf_counter() - started))
    if shortfall > 1.0:
        logger.warning("INT8 accuracy target %s not reached (best shortfall %.3f with %d layers in "
                       "float)", target.describe(), shortfall, len(names))
    return Int8Result(model, names, report)


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


class _AccuracySearch:
    """Agreement with FP32 on the validation batches, and the search for the quantizers to leave out.

    The search is coarse to fine: the quantizers (in graph order) are cut into
    :attr:`AccuracyTarget.blocks` consecutive blocks; each block is bypassed alone (leave-one-out,
    on the ranking frames) and the blocks ranked by the shortfall that leaves; the fewest
    top-ranked blocks that meet the goal are found; then the quantizers of those blocks are ranked
    the same way one by one, and the fewest top-ranked of them that meet the goal are kept. Every
    "meets" is measured on all validation frames of the switchable model.
    """

    def __init__(self, fp32: Any, target: AccuracyTarget, validation: list[np.ndarray],
                 inference_precision: str | None) -> None:
        self.target = target
        self.validation = validation
        self.inference_precision = inference_precision
        self.evaluations = 0
        reference = _compile(fp32, "f32")  # FP32 computed exactly: the reference
        self.references = [_run(reference, b) for b in validation]

    def shortfall_of(self, model: Any) -> float:
        compiled = _compile(model, self.inference_precision)
        return self.score([_run(compiled, b) for b in self.validation], self.references)

    def score(self, outputs: list[tuple[np.ndarray, np.ndarray]],
              references: list[tuple[np.ndarray, np.ndarray]]) -> float:
        cls = cosine([r[0] for r in references], [o[0] for o in outputs])
        box = cosine([r[1] for r in references], [o[1] for o in outputs])
        return self.target.shortfall(cls, box)

    def emulated(self, switch: _SwitchableModel, bypassed: Sequence[int], images: int | None = None) -> float:
        """The shortfall of the switchable model with quantizers ``bypassed``, on the first
        ``images`` validation batches (all by default)."""
        n = len(self.validation) if images is None else images
        self.evaluations += 1
        return self.score(switch.run(bypassed, self.validation[:n]), self.references[:n])

    def rank(self, switch: _SwitchableModel, groups: list[list[int]]) -> list[int]:
        """Indices of ``groups``, most harmful first: by the shortfall left when each group alone
        is bypassed (on the ranking frames); ties keep graph order."""
        scores = [self.emulated(switch, g, self.target.ranking_images) for g in groups]
        return sorted(range(len(groups)), key=lambda j: (scores[j], j))

    def shortest(self, switch: _SwitchableModel, prefix: Any, size: int) -> tuple[int | None, float]:
        """The smallest ``n <= size`` for which bypassing ``prefix(n)`` meets the goal: doubling,
        then bisection. ``(None, shortfall at size)`` when even ``size`` misses it."""
        goal = self.target.headroom
        n = 1
        while True:
            s = self.emulated(switch, prefix(n))
            if s <= goal:
                break
            if n >= size:
                return None, s
            n = min(size, 2 * n)
        low, high, best = n // 2, n, s  # `low` misses the goal (or is 0), `high` meets it
        while high - low > 1:
            mid = (low + high) // 2
            s = self.emulated(switch, prefix(mid))
            if s <= goal:
                high, best = mid, s
            else:
                low = mid
        return high, best

    def select(self, switch: _SwitchableModel) -> tuple[list[int], int | None, float]:
        """``(order, n, emulated shortfall)``: bypassing ``order[:n]`` meets the goal on the
        emulation (``n`` None: nothing does); ``order`` goes on with the other quantizers, for
        when the real model needs more."""
        size = switch.size
        k = max(1, min(self.target.blocks, size))
        blocks = [list(b) for b in np.array_split(np.arange(size), k) if len(b)]
        block_order = [blocks[j] for j in self.rank(switch, blocks)] if len(blocks) > 1 else blocks
        m, s = self.shortest(switch, lambda n: [i for b in block_order[:n] for i in b], len(block_order))
        if m is None:
            return [i for b in block_order for i in b], None, s
        members = [i for b in block_order[:m] for i in b]
        ranked = [members[j] for j in self.rank(switch, [[i] for i in members])] if len(members) > 1 else members
        n, s = self.shortest(switch, lambda n: ranked[:n], len(ranked))
        rest = [i for b in block_order[m:] for i in b]
        return ranked + rest, n, s


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
        self._names = [q.get_friendly_name() for q in self.quantizers]
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


# ---------------------------------------------------------------------------------- helpers


class _Batches:
    """A re-iterable, sized view of the calibration batches (NNCF iterates more than once)."""

    def __init__(self, calibration: Calibration, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.calibration, self.size, self.mean, self.std = calibration, size, mean, std
        self._len: int | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.calibration.batches(self.size, self.mean, self.std, layout="NCHW", dtype=np.float32)

    def __len__(self) -> int:
        if self._len is None:
            self._len = self.calibration.source.calibration_count(self.calibration.count)
        return self._len


def _preprocess(frame: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    from edgedet.preprocess import preprocess

    batch, _ = preprocess(frame, size, mean, std, layout="NCHW", dtype=np.float32)
    return batch


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


def _r(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else -1.0


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
