"""TFLite artifacts for the LiteRT interpreter (XNNPACK): FP32, FP16 and INT8.

Every precision takes an **NHWC** input ``images`` [1,R,R,3] (what TFLite and XNNPACK want; the
manifest says ``layout: NHWC``) and has the outputs ``cls_logits`` [1,N,C] and ``box_regression``
[1,N,4], found through the ``serving_default`` signature (never by shape or position). By default
(``input_kind="frame"``) the input is the uint8 frame canvas (BGR) and the graph starts with the
front end of :mod:`converters.frame_input` (CAST, then a 1x1 CONV_2D: colour order and
normalization), converted by litert-torch with the network; INT8 is calibrated on canvases and
keeps the uint8 input (no QUANTIZE of a float input; ``input_dtype`` applies to tensor input
only). With ``input_kind="tensor"`` it is the normalized float tensor, as described below.

* **fp32**: ``litert_torch.convert`` of the EfficientDet behind a small wrapper that permutes
  NHWC to NCHW (the converter folds the permute into its layout pass), traced under
  :func:`_export_rewrites`, which keeps two things exact that litert-torch 0.10 / TFLite would
  not: nearest upsampling by a non-integer factor (Lite0 at 320: 3 → 5; lowered with half-pixel
  centers it was 0.7 off) and large spatial means (TFLite's float32 MEAN over D0's 256x256
  squeeze-excite pool put the logits 2.4e-3 off).
* **fp16**: the FP32 graph with conv/FC weights stored as float16 (ai-edge-quantizer's
  ``float_casting`` weight-only recipe), float32 activations and I/O. The interpreter widens the
  weights once at load, so FP16 is for size (half the file), not speed, on CPUs.
* **int8**: full-integer static quantization of the FP32 file with ai-edge-quantizer
  (``static_wi8_ai8``: int8 per-channel symmetric weights, int8 per-tensor activations), calibrated
  on frames preprocessed by :func:`edgedet.preprocess.preprocess` in NHWC. Options:

  - ``input_dtype``: ``"float32"`` (default: a QUANTIZE op inside the graph), ``"int8"`` or
    ``"uint8"`` (integer input for integer-only accelerators; the manifest records
    ``input.quantization`` and the runtime quantizes the normalized frame with it);
  - ``float_outputs``: ``True`` (default) dequantizes both outputs inside the graph (a
    DEQUANTIZE op each); ``False`` keeps int8 outputs and records each output's ``quantization``
    for the runtime to dequantize. Float I/O measured ~3 ms per frame faster end to end on D0
    than int8 I/O with numpy (de)quantization (4.4M logits per frame);
  - ``accuracy_aware`` (default, as on every backend) / ``accuracy_target``: by
    :mod:`converters.int8`. This module's recipe (:class:`_TfliteRecipe`): quantization noise in
    this network is spread out, and a lone float op inside an int8 region barely helps (its
    output is requantized for the next op), so the units are contiguous model blocks: the stem,
    each backbone stage, the BiFPN's extra-level resampling and each cell, each head
    (:func:`_unit`), left in float by ai-edge-quantizer recipe overrides (``NO_QUANTIZE`` on their
    op scopes). Each unit is ranked by the shortfall left when it alone is in float (a real
    quantization each). The manifest's ``float_layers`` lists every compute op that runs in float.

Options that change the file also change the export key and are recorded in the manifest's
``options`` (see :meth:`TfliteExporter.options`).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters import frame_input, int8
from converters.accuracy import AccuracyTarget, Agreement, Outputs
from converters.base import ArtifactIO, ConvertError, Exporter, Runner, register_exporter
from converters.fp32_cache import Fp32Cache
from converters.quiet import quiet
from edgedet.manifest import InputSpec, NormalizationSpec, OutputSpec, Quantization
from edgedet.quantization import dequantize, quantize

if TYPE_CHECKING:
    from converters.calibration import Calibration
    from edgedet.config import ModelConfig

__all__ = ["INPUT_DTYPES", "INPUT_NAME", "OUTPUT_NAMES", "TfliteExporter"]

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("cls_logits", "box_regression")
SIGNATURE = "serving_default"
MODEL_FILE = "model.tflite"
INPUT_DTYPES = ("float32", "int8", "uint8")
#: Calibration frames handed to ai-edge-quantizer per call (it materializes what it is given).
_CALIBRATION_CHUNK = 8


# Ops that only move, pick or convert data: a float one among them is not "a layer left in float".
_DATA_MOVEMENT = {"RESHAPE", "TRANSPOSE", "CONCATENATION", "PAD", "PADV2", "MIRROR_PAD", "STRIDED_SLICE",
                  "SLICE", "SQUEEZE", "EXPAND_DIMS", "GATHER", "GATHER_ND", "MAX_POOL_2D",
                  "RESIZE_NEAREST_NEIGHBOR", "QUANTIZE", "DEQUANTIZE", "PACK", "UNPACK", "SPLIT",
                  "DELEGATE", "CAST"}
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


@register_exporter
class TfliteExporter(Exporter):
    """TFLite for the LiteRT interpreter, NHWC input, at FP32, FP16 (weights) and INT8 (full integer).

    Args:
        threads: interpreter threads for verification and the accuracy-aware search.
        input_kind: ``"frame"`` (default): the uint8 BGR canvas, preprocessed inside the graph;
            ``"tensor"``: the normalized float tensor.
        input_dtype: INT8 artifacts with tensor input only: ``"float32"``, ``"int8"`` or ``"uint8"``
            input (a frame artifact's input is uint8 pixels already).
        float_outputs: INT8 artifacts only: dequantize the outputs inside the graph.
        accuracy_aware: keep the model units whose quantization hurts most in float until INT8
            reaches ``accuracy_target`` (default; see :mod:`converters.int8`); ``False`` makes a
            fully quantized INT8 model.
        accuracy_target: the agreement accuracy-aware INT8 must reach; ``None`` = fully quantized.
    """

    name = "tflite"
    backend = "tflite"
    precisions = ("fp32", "fp16", "int8")
    requires = {"litert_torch": "litert-torch", "ai_edge_quantizer": "ai-edge-quantizer",
                "ai_edge_litert": "ai-edge-litert"}
    revision = 3  # 3: frame input (converters.frame_input)
    fp32_kind = "tflite"
    input_kinds = frame_input.INPUT_KINDS

    def __init__(self, *, threads: int | None = None, input_dtype: str = "float32", float_outputs: bool = True,
                 accuracy_aware: bool = True, accuracy_target: AccuracyTarget | None = AccuracyTarget(),
                 input_kind: str = frame_input.DEFAULT_INPUT) -> None:
        if input_dtype not in INPUT_DTYPES:
            raise ConvertError(f"tflite input_dtype must be one of {', '.join(INPUT_DTYPES)}, got {input_dtype!r}")
        self.input_kind = frame_input.check_input_kind(input_kind)
        if self.input_kind == "frame" and input_dtype != "float32":
            raise ConvertError(f"tflite input_dtype {input_dtype!r} is for tensor input; a frame-input artifact "
                               "takes uint8 pixels already: drop the input dtype, or ask for tensor input")
        self.threads = threads
        self.input_dtype = input_dtype
        self.float_outputs = bool(float_outputs)
        self.accuracy_target = accuracy_target if accuracy_aware else None
        self._cache = _Cache()
        #: What the last accuracy-aware INT8 export did, for logs and tests.
        self.last_int8: int8.Int8Report | None = None

    def options(self, precision: str) -> dict[str, str]:
        """The input (frame or tensor), and the options that shape INT8 files."""
        if precision != "int8":
            return {"input": self.input_kind}
        dtype = {"input_dtype": self.input_dtype} if self.input_kind == "tensor" else {}
        return {"input": self.input_kind, **dtype, "float_outputs": str(self.float_outputs).lower(),
                **int8.int8_options(self.accuracy_target)}

    @property
    def _frames(self) -> bool:
        return self.input_kind == "frame"

    def with_options(self, **changes: Any) -> TfliteExporter:
        """A copy with other options that shares this exporter's FP32 graph and calibration cache."""
        kwargs = dict(threads=self.threads, input_dtype=self.input_dtype, float_outputs=self.float_outputs,
                      accuracy_target=self.accuracy_target, input_kind=self.input_kind)
        kwargs.update(changes)
        other = type(self)(**kwargs)
        other._cache = self._cache
        return other

    # ------------------------------------------------------------------------------ export

    def export(self, model: Any, config: ModelConfig, out_dir: Path, precision: str,
               calibration: Calibration | None) -> list[Path]:
        self.check_request(precision, calibration)
        fp32 = self.fp32_graph(model, config)
        path = Path(out_dir) / MODEL_FILE
        if precision == "fp32":
            path.write_bytes(fp32)
        elif precision == "fp16":
            path.write_bytes(_to_fp16(fp32))
        else:
            qsvs = self._calibration(fp32, config, calibration)
            with tempfile.TemporaryDirectory(prefix="edgedet-tflite-int8-") as tmp:
                recipe = _TfliteRecipe(fp32, qsvs, config, Path(tmp), input_dtype=self.input_dtype,
                                       float_outputs=self.float_outputs, frames=self._frames,
                                       threads=self.threads or min(4, os.cpu_count() or 1))
                result = int8.quantize(recipe, self.accuracy_target, model, calibration)
            self.last_int8 = result.report
            path.write_bytes(result.model)
        return [path]

    def _calibration(self, fp32: bytes, config: ModelConfig, calibration: Calibration) -> dict:
        key = (hashlib.sha256(fp32).hexdigest(), calibration.key)
        if key not in self._cache.qsvs:
            self._cache.qsvs[key] = _calibrate(fp32, config, calibration, frames=self._frames)
        return self._cache.qsvs[key]

    def fp32_graph(self, model: Any, config: ModelConfig) -> bytes:
        """The FP32 flatbuffer of this exporter's input kind (frame and tensor graphs are cached apart)."""
        return self._cache.fp32[self.input_kind].get(
            model, config, lambda: _export_fp32(model, config, frames=self._frames))

    def seed_fp32(self, model: Any, config: ModelConfig, graph: bytes) -> None:
        self._cache.fp32[self.input_kind].put(model, config, graph)

    def release(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------------------------ inspect / run


    def describe(self, files: Sequence[Path], config: ModelConfig, precision: str) -> ArtifactIO:
        from edgedet.backends.tflite import TfliteBackend

        interpreter = TfliteBackend(files[0]).interpreter
        io = _signature_io(interpreter, NormalizationSpec.from_config(config.normalization))
        return ArtifactIO(input=io.input, outputs=io.outputs, float_layers=_float_layers(interpreter, precision))

    def runner(self, files: Sequence[Path], io: ArtifactIO) -> Runner:
        return _runner(files[0], io, self.threads)


# ---------------------------------------------------------------------------------- internals


@dataclass
class _Cache:
    """Work shared by the precisions and option variants of a model: FP32 files by weights,
    calibration statistics by (FP32 file, calibration). The pipeline releases it when it moves to
    another variant."""

    #: By input kind (``frame``, ``tensor``): two different graphs of the same weights.
    fp32: dict[str, Fp32Cache[bytes]] = field(
        default_factory=lambda: {kind: Fp32Cache() for kind in frame_input.INPUT_KINDS})
    qsvs: dict[tuple[str, str], dict] = field(default_factory=dict)

    def clear(self) -> None:
        for cache in self.fp32.values():
            cache.clear()
        self.qsvs.clear()


def _runner(path: Path, io: ArtifactIO, threads: int | None) -> Runner:
    from edgedet.backends.tflite import TfliteBackend

    return _backend_runner(TfliteBackend(path, threads=threads), io)


def _backend_runner(backend: Any, io: ArtifactIO) -> Runner:
    """Run a loaded :class:`~edgedet.backends.tflite.TfliteBackend`, fed and read as the runtime
    does: a float batch is quantized with the input's quantization (integer inputs; an integer
    batch is taken as already quantized), integer outputs are dequantized."""
    spec = io.input
    cls_spec = next(o for o in io.outputs if o.role == "cls_logits")
    box_spec = next(o for o in io.outputs if o.role == "box_regression")

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if spec.quantization is not None and np.issubdtype(batch.dtype, np.floating):
            batch = quantize(batch, spec.quantization, spec.dtype)
        outputs = backend.run(np.ascontiguousarray(batch, dtype=np.dtype(spec.dtype)))
        cls = dequantize(outputs[cls_spec.name], cls_spec.quantization)
        box = dequantize(outputs[box_spec.name], box_spec.quantization)
        return np.asarray(cls, np.float32), np.asarray(box, np.float32)

    return run


def _signature_io(interpreter: Any, normalization: NormalizationSpec) -> ArtifactIO:
    """Input and output specs from the model's ``serving_default`` signature."""
    try:
        signature = interpreter.get_signature_runner(SIGNATURE)
    except ValueError as exc:
        raise ConvertError(f"the TFLite model has no {SIGNATURE!r} signature") from exc
    inputs, outputs = signature.get_input_details(), signature.get_output_details()
    if set(inputs) != {INPUT_NAME} or set(outputs) != set(OUTPUT_NAMES):
        raise ConvertError(f"unexpected TFLite signature: inputs {sorted(inputs)}, outputs {sorted(outputs)}")
    detail = inputs[INPUT_NAME]
    shape = tuple(int(d) for d in detail["shape"])
    if len(shape) != 4 or shape[3] != 3:
        raise ConvertError(f"unexpected TFLite input shape {list(shape)}; expected [1,R,R,3] (NHWC)")
    if _dtype_name(detail) == "uint8" and not detail["quantization"][0]:
        # uint8 pixels, not a quantized tensor: the frame canvas (converters.frame_input)
        input_spec = frame_input.frame_spec(detail["name"], shape[1], normalization, batch=shape[0])
    else:
        input_spec = InputSpec(name=detail["name"], shape=shape, layout="NHWC", dtype=_dtype_name(detail),
                               normalization=normalization, color="RGB", quantization=_quantization(detail))
    output_specs = tuple(
        OutputSpec(name=outputs[role]["name"], role=role, shape=tuple(int(d) for d in outputs[role]["shape"]),
                   dtype=_dtype_name(outputs[role]), quantization=_quantization(outputs[role]))
        for role in OUTPUT_NAMES)
    return ArtifactIO(input=input_spec, outputs=output_specs)


def _nhwc_model(model: Any, *, frames: bool = False) -> Any:
    """The module litert-torch converts: ``model`` taking [B,H,W,C] and returning its outputs by
    name; with ``frames`` the uint8 canvas, through the front end of :mod:`converters.frame_input`
    (held here, at the root, so that tensor names keep their module paths: see :func:`_module_path`)."""
    import torch

    class NhwcEfficientDet(torch.nn.Module):
        """Takes the normalized image (or the uint8 frame canvas) as [B,H,W,C] and returns the
        outputs by name."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model
            self.frames = frames
            if frames:
                weight, bias = frame_input.front_end(NormalizationSpec.from_config(model.config.normalization))
                self.register_buffer("frame_weight", torch.from_numpy(weight.reshape(3, 3, 1, 1).copy()))
                self.register_buffer("frame_bias", torch.from_numpy(bias.copy()))

        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            if self.frames:
                x = frame_input.torch_front_end(images, self.frame_weight, self.frame_bias)
            else:
                x = images.permute(0, 3, 1, 2)
            cls, box = self.model(x)
            return {OUTPUT_NAMES[0]: cls, OUTPUT_NAMES[1]: box}

    return NhwcEfficientDet(model).eval()


#: A mean over more elements than this is traced as one mean per axis (see :func:`_export_rewrites`).
_MEAN_SPLIT = 1024


def _export_rewrites() -> Any:
    """A TorchFunctionMode under which the traced graph computes what PyTorch computes, in two
    places where litert-torch 0.10 / TFLite would not:

    * **Nearest upsampling by a non-integer factor.** PyTorch's ``nearest`` takes source index
      ``floor(i * in / out)``; litert-torch lowers ``F.interpolate(mode="nearest")`` to
      ``RESIZE_NEAREST_NEIGHBOR`` with half-pixel centers, ``floor((i + 0.5) * in / out)``. The two
      agree for integer factors (left as they are: one fast op) and differ otherwise (Lite0's
      BiFPN upsamples 3 → 5: logits 0.7 off). Those calls become an integer-factor resize and a
      crop when that picks the same pixels (3 → 5 is 2x then crop), else two index gathers, with
      ATen's index formula.
    * **Means over many elements.** TFLite's MEAN accumulates in float32: the squeeze-excite
      pool over D0's 256x256 stage-0 map is off by 1.5e-4 relative (XNNPACK) and D0's logits by
      2.4e-3. A mean over several axes and more than :data:`_MEAN_SPLIT` elements is traced as
      one mean per axis (the same value: the groups are equal-sized), each accurate.
    """
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    def source_indices(size_in: int, size_out: int) -> list[int]:
        # ATen's nearest_idx: min(floorf(i * (float)in / out), in - 1), in float32 arithmetic
        # (computed here in numpy: during export every torch op is traced, not evaluated).
        scale = np.float32(size_in) / np.float32(size_out)
        return [min(int(np.floor(np.float32(i) * scale)), size_in - 1) for i in range(size_out)]

    def nearest(x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False):
        if mode != "nearest" or size is None or x.dim() != 4:
            return None
        out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        in_h, in_w = int(x.shape[-2]), int(x.shape[-1])
        if out_h % in_h == 0 and out_w % in_w == 0:
            return None  # integer factors: RESIZE_NEAREST_NEIGHBOR is exact
        rows, cols = source_indices(in_h, out_h), source_indices(in_w, out_w)
        fh, fw = math.ceil(out_h / in_h), math.ceil(out_w / in_w)
        if rows == [i // fh for i in range(out_h)] and cols == [j // fw for j in range(out_w)]:
            up = F.interpolate(x, size=(in_h * fh, in_w * fw), mode="nearest")
            return up[:, :, :out_h, :out_w]
        x = x.index_select(2, torch.tensor(rows, dtype=torch.long))
        return x.index_select(3, torch.tensor(cols, dtype=torch.long))

    def mean(x, dim=None, keepdim=False, *, dtype=None):
        if dtype is not None or not isinstance(dim, (tuple, list)) or len(dim) < 2:
            return None
        axes = sorted({int(d) % x.dim() for d in dim}, reverse=True)
        if math.prod(int(x.shape[d]) for d in axes) <= _MEAN_SPLIT:
            return None
        for axis in axes:
            x = x.mean(axis, keepdim=True)
        return x if keepdim else x.squeeze(tuple(axes))

    rewrites = {F.interpolate: nearest, torch.Tensor.mean: mean, torch.mean: mean}

    class ExportRewrites(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            rewrite = rewrites.get(func)
            if rewrite is not None:
                result = rewrite(*args, **kwargs)  # the mode is off inside: plain torch calls
                if result is not None:
                    return result
            return func(*args, **kwargs)

    return ExportRewrites()


def _export_fp32(model: Any, config: ModelConfig, *, frames: bool = False) -> bytes:
    import torch

    size = int(getattr(model, "image_size", config.image_size))
    started = time.perf_counter()
    sample = torch.zeros(1, size, size, 3, dtype=torch.uint8 if frames else torch.float32)
    content = _convert_module(_nhwc_model(model, frames=frames), {INPUT_NAME: sample})
    logger.info("%s: litert-torch FP32 conversion (%s input) %.1f s", config.name,
                "frame" if frames else "tensor", time.perf_counter() - started)
    return content


def _convert_module(module: Any, sample_kwargs: Mapping[str, Any]) -> bytes:
    """``litert_torch.convert`` of an eval-mode module, nearest upsampling traced exactly."""
    import litert_torch
    import torch

    with quiet(), torch.no_grad(), _export_rewrites():
        edge_model = litert_torch.convert(module, sample_kwargs=dict(sample_kwargs))
        return bytes(edge_model.model_content())


def _quantizer_names() -> tuple[Any, Any, Any, Any]:
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    return quantizer, recipe, qtyping, AlgorithmName


def _to_fp16(fp32: bytes) -> bytes:
    quantizer, _, qtyping, algorithms = _quantizer_names()
    qt = quantizer.Quantizer(fp32)
    ops = qtyping.TFLOperationName
    for op in (ops.CONV_2D, ops.DEPTHWISE_CONV_2D, ops.FULLY_CONNECTED, ops.CONV_2D_TRANSPOSE):
        qt.add_weight_only_config(regex=".*", operation_name=op, num_bits=16,
                                  algorithm_key=algorithms.FLOAT_CASTING)
    with quiet():
        result = qt.quantize(enable_progress_report=False)
    return bytes(result.quantized_model)


def _calibration_batches(config: ModelConfig, calibration: Calibration, *, frames: bool = False) -> Iterator[np.ndarray]:
    """The calibration frames as the FP32 graph takes them: the uint8 canvas, or the NHWC tensor."""
    norm = NormalizationSpec.from_config(config.normalization)
    if frames:
        return calibration.inputs(frame_input.frame_spec(INPUT_NAME, config.image_size, norm))
    return calibration.inputs(InputSpec(INPUT_NAME, (1, config.image_size, config.image_size, 3), "NHWC",
                                        "float32", norm))


def _calibrate(fp32: bytes, config: ModelConfig, calibration: Calibration, *, frames: bool = False) -> dict:
    """Min/max statistics of every tensor over the calibration frames (ai-edge-quantizer's QSVs).

    Fed in chunks (the quantizer lists what it is given), resuming from the previous result: the
    same statistics as one call, with only a chunk of frames in memory.
    """
    quantizer, recipe, _, _ = _quantizer_names()
    qt = quantizer.Quantizer(fp32, recipe.static_wi8_ai8())
    qsvs: dict | None = None
    count = 0
    chunk: list[dict[str, np.ndarray]] = []
    started = time.perf_counter()

    def flush() -> None:
        nonlocal qsvs
        with quiet():
            qsvs = qt.calibrate({SIGNATURE: chunk}, previous_calibration_result=qsvs)

    for batch in _calibration_batches(config, calibration, frames=frames):
        chunk.append({INPUT_NAME: batch})
        count += 1
        if len(chunk) == _CALIBRATION_CHUNK:
            flush()
            chunk = []
    if chunk:
        flush()
    if count == 0 or qsvs is None:
        raise ConvertError(f"calibration source {calibration.source.description} yielded no frames")
    logger.info("%s: INT8 calibration on %d frames %.1f s", config.name, count, time.perf_counter() - started)
    return qsvs


def _quantize_int8(fp32: bytes, qsvs: dict, *, input_dtype: str, float_outputs: bool,
                   float_scopes: Sequence[str] = ()) -> bytes:
    """``static_wi8_ai8`` with the I/O choices, and the ops whose scopes are given left in float."""
    quantizer, recipe, qtyping, algorithms = _quantizer_names()
    ops = qtyping.TFLOperationName
    qt = quantizer.Quantizer(fp32, recipe.static_wi8_ai8())
    if input_dtype == "float32":
        qt.update_quantization_recipe(regex=".*", operation_name=ops.INPUT, algorithm_key=algorithms.NO_QUANTIZE)
    elif input_dtype == "uint8":
        qt.update_quantization_recipe(
            regex=".*", operation_name=ops.INPUT,
            op_config=qtyping.OpQuantizationConfig(
                activation_tensor_config=qtyping.TensorQuantizationConfig(
                    num_bits=8, symmetric=False, dtype=qtyping.TensorDataType.UINT),
                compute_precision=qtyping.ComputePrecision.INTEGER),
            algorithm_key=algorithms.MIN_MAX_UNIFORM_QUANT)
    if float_outputs:
        qt.update_quantization_recipe(regex=".*", operation_name=ops.OUTPUT, algorithm_key=algorithms.NO_QUANTIZE)
    if float_scopes:
        # Scopes are the ops' output tensor names, each followed by ';' (ai-edge-quantizer's op
        # scope); an anchored alternation selects exactly these ops. Later entries win.
        pattern = "^(?:" + "|".join(re.escape(s) for s in float_scopes) + ")$"
        qt.update_quantization_recipe(regex=pattern, operation_name=ops.ALL_SUPPORTED,
                                      algorithm_key=algorithms.NO_QUANTIZE)
    with quiet():
        result = qt.quantize(qsvs, enable_progress_report=False)
    return bytes(result.quantized_model)


# ---------------------------------------------------------------------------------- graph reading


@dataclass(frozen=True)
class _Op:
    index: int
    op: str
    scope: str  # ai-edge-quantizer's op scope: output tensor names joined by ';', plus ';'
    label: str  # a readable, unique name: module path and op type
    unit: str  # the model unit it belongs to (stem, a backbone stage, a BiFPN cell, a head...)
    outputs: tuple[int, ...]
    inputs: tuple[int, ...]


def _graph_ops(interpreter: Any) -> tuple[list[_Op], dict[int, dict]]:
    """The model's ops (delegate nodes left out) and its tensor details by index."""
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops, seen = [], {}
    for detail in interpreter._get_ops_details():  # noqa: SLF001 - the interpreter's op listing
        if detail["op_name"] == "DELEGATE":
            continue
        outputs = tuple(int(i) for i in detail["outputs"] if i >= 0)
        names = [tensors[i]["name"] for i in outputs if tensors[i]["name"]]
        scope = ";".join(names) + (";" if names else "")
        path = _module_path(names[0]) if names else f"op{detail['index']}"
        label = f"{path}:{detail['op_name']}"
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}#{seen[label]}"
        ops.append(_Op(int(detail["index"]), detail["op_name"], scope, label, _unit(path), outputs,
                       tuple(int(i) for i in detail["inputs"])))
    return ops, tensors


_COMPONENT = re.compile(r"^_?[A-Za-z0-9]+_(.+)$")


def _module_path(tensor_name: str) -> str:
    """``a.b.EfficientDet_model/x.EfficientNet_backbone/y.Sequential_1/...;3`` -> ``backbone.1...``.

    litert-torch names tensors after the module path, each step ``<module.Class>_<attribute>``;
    the wrapper (the root, which has no attribute) and the wrapped model are dropped. Names of
    another form are kept as they are.
    """
    first = tensor_name.split(";", 1)[0]
    steps = first.split("/")
    attrs = []
    for step in steps:
        match = _COMPONENT.match(step.rsplit(".", 1)[-1])
        attrs.append(match.group(1) if match else None)
    if len(attrs) < 3 or attrs[0] is not None or attrs[1] is None:
        return first
    path = [a if a is not None else steps[i] for i, a in enumerate(attrs[2:], start=2)]
    return ".".join(path) or first


def _unit(path: str) -> str:
    """The search unit of a module path: the stem, a backbone stage, the BiFPN's extra-level
    resampling or one of its cells, a head; other names form their own unit."""
    parts = path.split(".")
    top = parts[0]
    if top == "backbone":
        return f"backbone.stage{parts[1]}" if len(parts) > 1 and parts[1].isdigit() else "backbone.stem"
    if top == "fpn" and len(parts) > 1:
        return f"fpn.{parts[1]}"
    if top in ("class_net", "box_net"):
        return top
    return "output"


def _dtype_name(detail: Mapping[str, Any]) -> str:
    return np.dtype(detail["dtype"]).name


def _quantization(detail: Mapping[str, Any]) -> Quantization | None:
    if not np.issubdtype(np.dtype(detail["dtype"]), np.integer):
        return None
    scale, zero_point = detail["quantization"]
    if not scale:
        raise ConvertError(f"integer tensor {detail['name']!r} has no quantization parameters")
    return Quantization(scale=float(scale), zero_point=int(zero_point))


def _float_layers(interpreter: Any, precision: str) -> tuple[str, ...]:
    """Compute ops that run in floating point in a reduced-precision file.

    int8: ops (other than data movement and (de)quantization) with a float32 output.
    fp16: weighted ops whose weights are not stored in float16.
    """
    if precision == "fp32":
        return ()
    ops, tensors = _graph_ops(interpreter)
    producers = {out: op for op in ops for out in op.outputs}
    left = []
    for op in ops:
        if op.op in _DATA_MOVEMENT or not op.outputs:
            continue
        if precision == "int8":
            if np.dtype(tensors[op.outputs[0]]["dtype"]) == np.float32:
                left.append(op.label)
        elif op.op in _WEIGHT_OPS and len(op.inputs) > 1:
            weight = op.inputs[1]
            source = producers.get(weight)
            stored = tensors[source.inputs[0]] if source is not None and source.op == "DEQUANTIZE" else tensors[weight]
            if np.dtype(stored["dtype"]) != np.float16:
                left.append(op.label)
    return tuple(left)


# ---------------------------------------------------------------------------------- accuracy-aware


class _TfliteRecipe:
    """The TFLite recipe of :mod:`converters.int8`: ai-edge-quantizer with ``NO_QUANTIZE`` overrides
    on the op scopes of the units left in float, units = model blocks (:func:`_unit`) ranked by a
    real quantization each, candidates run by the LiteRT interpreter as the runtime feeds them."""

    def __init__(self, fp32: bytes, qsvs: dict, config: ModelConfig, work: Path, *, input_dtype: str,
                 float_outputs: bool, threads: int, frames: bool = False) -> None:
        self.fp32, self.qsvs, self.work, self.threads = fp32, qsvs, work, threads
        self.normalization = NormalizationSpec.from_config(config.normalization)
        self.input_dtype, self.float_outputs, self.frames = input_dtype, float_outputs, frames

    def quantize(self, float_members: Sequence[str]) -> bytes:
        return _quantize_int8(self.fp32, self.qsvs, input_dtype=self.input_dtype, float_outputs=self.float_outputs,
                              float_scopes=float_members)

    def run(self, candidate: bytes, batches: Sequence[np.ndarray]) -> list[Outputs]:
        from edgedet.backends.tflite import TfliteBackend

        path = self.work / "candidate.tflite"
        path.write_bytes(candidate)
        backend = TfliteBackend(path, threads=self.threads)
        run = _backend_runner(backend, _signature_io(backend.interpreter, self.normalization))
        if self.frames:  # the preprocessed batches back to the canvases they were made from (exact)
            return [run(frame_input.canvas_from_batch(b, self.normalization)) for b in batches]
        return [run(np.ascontiguousarray(b.transpose(0, 2, 3, 1))) for b in batches]

    def rank(self, full: bytes, agreement: Agreement, trial: int8.Trial) -> int8.Ranking:
        from edgedet.backends.tflite import TfliteBackend

        path = self.work / "fp32.tflite"
        path.write_bytes(self.fp32)
        units: dict[str, list[str]] = {}
        for op in _graph_ops(TfliteBackend(path).interpreter)[0]:
            if op.scope:
                units.setdefault(op.unit, []).append(op.scope)
        units.pop("output", None)  # reshapes/concats of the outputs: nothing to gain
        shortfalls = {name: trial(scopes) for name, scopes in units.items()}
        order = sorted(units, key=lambda name: (shortfalls[name], len(units[name])))
        return int8.Ranking(tuple(int8.Unit(name, tuple(units[name])) for name in order))
