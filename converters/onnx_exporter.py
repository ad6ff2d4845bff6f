"""ONNX artifacts for onnxruntime: FP32, FP16 and INT8 (QDQ).

* **fp32**: ``torch.onnx.export`` (the dynamo exporter, opset 18, one self-contained file) at the
  variant's fixed size, simplified with onnxslim and checked with ``onnx.checker``. Input
  ``images`` [1,3,R,R] float32 (normalized, NCHW); outputs ``cls_logits`` [1,N,C] and
  ``box_regression`` [1,N,4].
* **fp16**: the FP32 graph with weights and compute in float16 (onnxruntime's
  ``transformers.float16`` converter, the maintained copy of onnxconverter-common's), keeping
  float32 inputs and outputs so the artifact is fed exactly like the FP32 one. On CPUs without
  FP16 kernels onnxruntime runs those nodes through inserted casts: FP16 there is for size (half
  the file), not speed.
* **int8**: ``onnxruntime.quantization.quantize_static`` in QDQ format, per-channel int8 weights,
  uint8 activations (the combination that was both fastest and most accurate here, see STACK.md),
  MinMax calibration on frames preprocessed by :func:`edgedet.preprocess.preprocess`. Float
  input/output; the layers left in float are listed in the manifest's ``float_layers``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.base import ArtifactIO, ConvertError, Exporter, Runner, register_exporter
from edgedet.manifest import InputSpec, NormalizationSpec, OutputSpec

if TYPE_CHECKING:
    import onnx

    from converters.calibration import Calibration
    from edgedet.config import ModelConfig

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "OPSET", "OnnxExporter", "export_fp32", "quiet"]

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("cls_logits", "box_regression")
OPSET = 18
MODEL_FILE = "model.onnx"

# onnx TensorProto element types -> manifest dtypes
_DTYPES = {1: "float32", 10: "float16", 2: "uint8", 3: "int8"}
# Ops that only move or pick data: a float one among them is not "a layer left in float".
_DATA_MOVEMENT = {"Reshape", "Transpose", "Concat", "Pad", "Slice", "Squeeze", "Unsqueeze", "Flatten",
                  "Identity", "Cast", "Shape", "Gather", "Split", "Expand", "Constant",
                  "QuantizeLinear", "DequantizeLinear", "MaxPool", "Resize"}


@register_exporter
class OnnxExporter(Exporter):
    """ONNX for onnxruntime (CPU execution provider), NCHW float32 I/O at every precision."""

    name = "onnx"
    backend = "onnxruntime"
    precisions = ("fp32", "fp16", "int8")
    requires = {"onnx": "onnx", "onnxscript": "onnxscript", "onnxslim": "onnxslim",
                "onnxruntime": "onnxruntime"}
    revision = 1

    def __init__(self, *, threads: int | None = None) -> None:
        self.threads = threads
        self._cache_key: tuple[int, str] | None = None
        self._cache: bytes | None = None

    # ------------------------------------------------------------------------------ export

    def export(self, model: Any, config: ModelConfig, out_dir: Path, precision: str,
               calibration: Calibration | None) -> list[Path]:
        import onnx

        if precision not in self.precisions:
            raise ConvertError(f"onnx exports {', '.join(self.precisions)}, not {precision!r}")
        fp32 = onnx.load_from_string(self._fp32_bytes(model, config))
        path = Path(out_dir) / MODEL_FILE
        if precision == "fp32":
            _save(fp32, path)
        elif precision == "fp16":
            _save(_to_fp16(fp32), path)
        else:
            if calibration is None:
                raise ConvertError("int8 needs calibration data (--calibration)")
            _quantize_int8(fp32, path, config, calibration)
        return [path]

    def _fp32_bytes(self, model: Any, config: ModelConfig) -> bytes:
        """The simplified, checked FP32 graph; cached for the other precisions of the same model."""
        key = (id(model), config.name)
        if self._cache_key != key or self._cache is None:
            self._cache = export_fp32(model, config).SerializeToString()
            self._cache_key = key
        return self._cache

    def release(self) -> None:
        self._cache_key, self._cache = None, None

    # ------------------------------------------------------------------------------ inspect / run

    def describe(self, files: Sequence[Path], config: ModelConfig, precision: str) -> ArtifactIO:
        import onnx

        graph = onnx.load(str(files[0]), load_external_data=False).graph
        (inp,) = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
        dtype, shape = _value_info(inp)
        if inp.name != INPUT_NAME or len(shape) != 4 or shape[1] != 3:
            raise ConvertError(f"unexpected ONNX input {inp.name!r} {shape}")
        input_spec = InputSpec(
            name=inp.name, shape=shape, layout="NCHW", dtype=dtype,
            normalization=NormalizationSpec.from_config(config.normalization), color="RGB",
            quantization=None,
        )
        outputs = []
        for out in graph.output:
            dtype, shape = _value_info(out)
            if out.name not in OUTPUT_NAMES:
                raise ConvertError(f"unexpected ONNX output {out.name!r}")
            outputs.append(OutputSpec(name=out.name, role=out.name, shape=shape, dtype=dtype))
        return ArtifactIO(input=input_spec, outputs=tuple(outputs), float_layers=_float_layers(graph, precision))

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


# ---------------------------------------------------------------------------------- internals


def export_fp32(model: Any, config: ModelConfig) -> onnx.ModelProto:
    """The simplified, checked FP32 ONNX graph of ``model`` (also the OpenVINO exporter's source)."""
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


class _Reader:
    """onnxruntime's CalibrationDataReader over :meth:`Calibration.batches`."""

    def __init__(self, calibration: Calibration, config: ModelConfig, size: int) -> None:
        from onnxruntime.quantization import CalibrationDataReader

        norm = config.normalization

        def batches() -> Iterator[np.ndarray]:
            return calibration.batches(size, norm.mean, norm.std, layout="NCHW", dtype=np.float32)

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

        self.reader = Reader()


def _quantize_int8(fp32: onnx.ModelProto, path: Path, config: ModelConfig, calibration: Calibration) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    size = fp32.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    source = path.with_name(path.name + ".fp32-source")
    _save(fp32, source)
    reader = _Reader(calibration, config, size).reader
    try:
        with quiet():
            quantize_static(
                source, path, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    finally:
        source.unlink(missing_ok=True)
    if reader.count == 0:
        raise ConvertError(f"calibration source {calibration.source.description} yielded no frames")
    onnx.checker.check_model(str(path), full_check=True)


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


def _float_layers(graph: Any, precision: str) -> tuple[str, ...]:
    """Compute nodes that run in float32 in a reduced-precision graph.

    int8 (QDQ): a compute node counts as quantized when its first input comes from a
    DequantizeLinear; fp16: when its first input is float16 (nodes behind casts are float).
    """
    if precision == "fp32":
        return ()
    producers = {out: node for node in graph.node for out in node.output}
    if precision == "int8":
        left = []
        for node in graph.node:
            if node.op_type in _DATA_MOVEMENT or not node.input:
                continue
            src = producers.get(node.input[0])
            if src is None or src.op_type != "DequantizeLinear":
                left.append(node.name or node.op_type)
        return tuple(left)
    # fp16: nodes fed by a Cast to float32 (elem type 1) are the blocked ones.
    left = []
    for node in graph.node:
        if node.op_type in _DATA_MOVEMENT or not node.input:
            continue
        src = producers.get(node.input[0])
        if src is not None and src.op_type == "Cast" and any(
                a.name == "to" and a.i == 1 for a in src.attribute):
            left.append(node.name or node.op_type)
    return tuple(left)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence stdout chatter, warnings and INFO/WARNING logging of the exporters for the duration."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
