"""Artifacts that take the camera frame: colour order, normalization and layout inside the graph.

An artifact with **frame input** (``edgedet-convert --input frame``, the default of the ONNX,
OpenVINO and TFLite exporters) takes the letterboxed uint8 canvas ``[B,S,S,3]`` (NHWC, BGR: the
channel order of OpenCV frames, padded with the mean colour) and does the rest itself. Its
manifest says ``input.preprocessing: "model"``, ``layout: NHWC``, ``dtype: uint8``, ``color: BGR``
and keeps the ``normalization`` the graph applies; the runtime only letterboxes
(:func:`edgedet.preprocess.canvas_batch`), straight into the batch it hands the runtime. A
**tensor-input** artifact (``--input tensor``) takes the normalized float tensor, as before.

The front end is one definition (:func:`front_end`): cast to float32, NHWC → NCHW, then one 1×1
convolution whose weights are the BGR → RGB channel permutation times ``1/std`` and whose bias is
``-mean/std`` (the constants of :func:`edgedet.preprocess.normalization_affine`, so a frame
artifact computes what the runtime's preprocessing computes, to float rounding). How each backend
gets it:

* **ONNX** (:func:`onnx_frame_input`): Transpose, Cast and the Conv are put in front of the
  finished graph of every precision. FP16 and INT8 are therefore made exactly as for tensor input
  (calibration, accuracy-aware search and QDQ placement see the same graph), and the network's
  INT8 core is the same file content; the front end runs in float32 before the first
  QuantizeLinear.
* **OpenVINO** (:func:`openvino_frame_input`): the same front end put in front of the finished
  model (FP32, FP16 or NNCF INT8) with OpenVINO's PrePostProcessor (u8 NHWC BGR tensor; convert
  to f32, to RGB, mean and scale; NCHW model), which the CPU plug-in folds into its input
  reorder. Also after quantization, for the same reason.
* **TFLite** (``converters.tflite_exporter``): litert-torch converts the network behind the
  front end in torch (:func:`torch_front_end`), so the FP32 flatbuffer takes the
  uint8 canvas; ai-edge-quantizer then quantizes that graph, calibrated on canvases
  (:meth:`converters.calibration.Calibration.inputs`), and the uint8 input stays uint8 into the
  graph (CAST, then the quantized 1×1 CONV_2D).

Parity is measured like any artifact's: the held-out frames go through
:func:`edgedet.preprocess.prepare` with the artifact's own input spec (the runtime's path) and the
outputs are compared with PyTorch FP32 on the same frames.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edgedet.manifest import InputSpec, NormalizationSpec
from edgedet.preprocess import normalization_affine

if TYPE_CHECKING:
    import onnx

__all__ = ["DEFAULT_INPUT", "FRAME_COLOR", "FRONT_END_PREFIX", "INPUT_KINDS", "canvas_from_batch",
           "check_input_kind", "frame_input_module", "frame_spec", "front_end", "onnx_frame_input",
           "openvino_frame_input", "torch_front_end"]

#: What an exporter's ``input_kind`` may be: the frame canvas, or the normalized tensor.
INPUT_KINDS = ("frame", "tensor")
#: What new exports take unless asked otherwise.
DEFAULT_INPUT = "frame"
#: The channel order of a frame artifact's canvas: OpenCV's (the runtime swaps RGB frames).
FRAME_COLOR = "BGR"
#: Names of the ONNX nodes and initializers of the front end (not layers of the network).
FRONT_END_PREFIX = "edgedet_frame_"


def check_input_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`INPUT_KINDS`, else ``ValueError`` saying what to pass."""
    if kind not in INPUT_KINDS:
        raise ValueError(f"input must be one of {', '.join(INPUT_KINDS)} (frame: the uint8 frame canvas, "
                         f"preprocessed inside the model; tensor: the normalized float tensor), got {kind!r}")
    return kind


def front_end(normalization: NormalizationSpec, color: str = FRAME_COLOR) -> tuple[np.ndarray, np.ndarray]:
    """The front end's 1×1 convolution: weights ``[3 (RGB out), 3 (canvas channels in)]`` and bias
    ``[3]``, float32: ``out[c] = canvas[src(c)] * scale[c] + shift[c]`` with ``src`` the RGB
    channel's position in ``color`` order and scale/shift from
    :func:`edgedet.preprocess.normalization_affine`."""
    if color not in ("BGR", "RGB"):
        raise ValueError(f"color must be 'BGR' or 'RGB', got {color!r}")
    scale, shift = normalization_affine(normalization.mean, normalization.std)
    weight = np.zeros((3, 3), np.float32)
    for c in range(3):
        weight[c, 2 - c if color == "BGR" else c] = scale[c]
    return weight, shift.astype(np.float32)


def frame_spec(name: str, image_size: int, normalization: NormalizationSpec, *, batch: int = 1,
               color: str = FRAME_COLOR) -> InputSpec:
    """The manifest ``input`` of a frame artifact: the uint8 canvas, NHWC, preprocessed in the model."""
    return InputSpec(name=name, shape=(batch, image_size, image_size, 3), layout="NHWC", dtype="uint8",
                     normalization=normalization, color=color, quantization=None, preprocessing="model")


def canvas_from_batch(batch: np.ndarray, normalization: NormalizationSpec, color: str = FRAME_COLOR) -> np.ndarray:
    """The uint8 canvases ``[B,S,S,3]`` that :func:`edgedet.preprocess.preprocess` turned into the
    normalized NCHW float32 ``batch``: the exact inverse (a pixel step is ``1/std`` ≈ 0.008-0.02
    in normalized units, float32 rounding 1e-7), for code that holds preprocessed batches
    (the accuracy-aware INT8 search's validation batches) and runs a frame artifact on them.

    Raises:
        ValueError: ``batch`` is not such a batch (a value is not within 0.01 of a pixel value).
    """
    scale, shift = normalization_affine(normalization.mean, normalization.std)
    x = np.asarray(batch, np.float64).transpose(0, 2, 3, 1)
    pixels = (x - shift.astype(np.float64)) / scale.astype(np.float64)
    rounded = np.rint(pixels)
    if pixels.size and (np.abs(pixels - rounded).max() > 0.01 or rounded.min() < 0 or rounded.max() > 255):
        raise ValueError("the batch was not made by edgedet.preprocess with this normalization: its values "
                         "are not normalized pixel values")
    canvas = rounded.astype(np.uint8)
    if color == "BGR":
        canvas = canvas[..., ::-1]
    return np.ascontiguousarray(canvas)


# ---------------------------------------------------------------------------------- torch


def torch_front_end(images: Any, weight: Any, bias: Any) -> Any:
    """The front end in torch: uint8 ``[B,S,S,3]`` canvas → normalized float32 ``[B,3,S,S]`` (RGB)."""
    import torch
    import torch.nn.functional as F

    return F.conv2d(images.permute(0, 3, 1, 2).to(torch.float32), weight, bias)


def frame_input_module(model: Any, normalization: NormalizationSpec, color: str = FRAME_COLOR) -> Any:
    """A ``torch.nn.Module`` (eval mode) that takes the uint8 canvas ``[B,S,S,3]`` (``color``
    order) and returns ``model``'s outputs on the normalized tensor: the front end
    (:func:`torch_front_end`, its constants as the buffers ``frame_weight`` and ``frame_bias``) in
    front of ``model``. The reference a frame artifact is compared with in tests."""
    import torch

    weight, bias = front_end(normalization, color)

    class FrameInput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("frame_weight", torch.from_numpy(weight.reshape(3, 3, 1, 1).copy()))
            self.register_buffer("frame_bias", torch.from_numpy(bias.copy()))

        def forward(self, images: torch.Tensor) -> Any:
            return self.model(torch_front_end(images, self.frame_weight, self.frame_bias))

    return FrameInput().eval()


# ---------------------------------------------------------------------------------- ONNX


def onnx_frame_input(model: onnx.ModelProto, normalization: NormalizationSpec,
                     color: str = FRAME_COLOR) -> onnx.ModelProto:
    """``model`` (one float32 NCHW input ``[B,3,S,S]``, any precision inside) with the front end in
    front of it, in place: its input becomes the uint8 canvas ``[B,S,S,3]`` of the same name,
    followed by Transpose (on uint8: a quarter of the bytes), Cast to float32 and the 1×1 Conv of
    :func:`front_end`, whose output feeds what the input fed. Returns ``model``, checked."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"the graph must have one input to put the frame front end on, it has {len(inputs)}")
    inp = inputs[0]
    tensor = inp.type.tensor_type
    dims = [d.dim_value for d in tensor.shape.dim]
    if tensor.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3 or dims[2] != dims[3]:
        raise ValueError(f"the frame front end needs a float32 [B,3,S,S] input, got {inp.name!r} "
                         f"type {tensor.elem_type} shape {dims}")
    name, (b, _, size, _) = inp.name, dims
    normalized = f"{FRONT_END_PREFIX}normalized"
    for node in graph.node:
        for i, value in enumerate(node.input):
            if value == name:
                node.input[i] = normalized
    for i, out in enumerate(graph.output):
        if out.name == name:  # pragma: no cover - an identity model; no edgedet graph
            raise ValueError("the graph's input is also an output")
    weight, bias = front_end(normalization, color)
    graph.initializer.extend([
        numpy_helper.from_array(weight.reshape(3, 3, 1, 1), f"{FRONT_END_PREFIX}weight"),
        numpy_helper.from_array(bias, f"{FRONT_END_PREFIX}bias"),
    ])
    nodes = [
        helper.make_node("Transpose", [name], [f"{FRONT_END_PREFIX}nchw"], perm=[0, 3, 1, 2],
                         name=f"{FRONT_END_PREFIX}transpose"),
        helper.make_node("Cast", [f"{FRONT_END_PREFIX}nchw"], [f"{FRONT_END_PREFIX}float"], to=TensorProto.FLOAT,
                         name=f"{FRONT_END_PREFIX}cast"),
        helper.make_node("Conv", [f"{FRONT_END_PREFIX}float", f"{FRONT_END_PREFIX}weight", f"{FRONT_END_PREFIX}bias"],
                         [normalized], kernel_shape=[1, 1], name=f"{FRONT_END_PREFIX}normalize"),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    position = list(graph.input).index(inp)
    graph.input.remove(inp)
    graph.input.insert(position, helper.make_tensor_value_info(name, TensorProto.UINT8, [b, size, size, 3]))
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------------------------- OpenVINO


def openvino_frame_input(model: Any, normalization: NormalizationSpec, color: str = FRAME_COLOR) -> Any:
    """``model`` (an ``ov.Model`` with one f32 NCHW input) behind OpenVINO's PrePostProcessor: a u8
    NHWC tensor in ``color`` order, converted to f32 and RGB, ``(x - mean) / std`` per channel,
    then NCHW. Returns the built model (the input keeps its name)."""
    import openvino as ov
    from openvino.preprocess import ColorFormat, PrePostProcessor

    names = model.inputs[0].get_names()
    ppp = PrePostProcessor(model)
    inp = ppp.input()
    inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(
        ColorFormat.BGR if color == "BGR" else ColorFormat.RGB)
    inp.model().set_layout(ov.Layout("NCHW"))
    steps = inp.preprocess().convert_element_type(ov.Type.f32)
    if color == "BGR":
        steps = steps.convert_color(ColorFormat.RGB)
    steps.mean([float(v) for v in normalization.mean]).scale([float(v) for v in normalization.std])
    built = ppp.build()
    if not built.inputs[0].get_names():  # the canvas keeps the input's name ("images")
        built.inputs[0].get_tensor().set_names(set(names))
    return built
