"""Rewrites of a quantized (QDQ) ONNX graph for onnxruntime's CPU provider: they remove passes over
activations that onnxruntime cannot fuse, and compute the same thing with fewer roundings. INT8
graphs only (the FP32 and FP16 artifacts are never rewritten); :func:`rewrite` applies them all.

* :func:`scalar_muls_into_scales`: a quantized tensor times a positive constant scalar (the BiFPN's
  fast-normalized fusion weights: 57 in D0) is the same codes with a larger scale, so
  ``DQ -> Mul(w) -> Q -> DQ`` becomes one ``DQ`` with scale ``s * w``. onnxruntime ran each as a
  QLinearMul pass over the tensor.
* :func:`integer_pads`: ``DQ -> Pad(edge) -> Q`` with equal quantization parameters (the replicate
  pads before the BiFPN's max pools: 14 in D0 and Lite0) becomes a ``Pad`` of the codes.
  onnxruntime has no QDQ fusion for Pad and ran it in float between a DQ and a Q.

What onnxruntime's CPU provider still cannot run faster in INT8 (swish as QLinearSigmoid +
QLinearMul, nearest Resize on NHWC uint8) is in docs/TOOLCHAIN.md.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

__all__ = ["integer_pads", "rewrite", "scalar_muls_into_scales"]

logger = logging.getLogger(__name__)


def rewrite(model: onnx.ModelProto) -> dict[str, int]:
    """Apply every rewrite of this module to ``model`` (a QDQ graph from onnxruntime's
    ``quantize_static``), in place; returns how many places each rewrote."""
    counts = {"integer_pads": integer_pads(model), "scalar_muls_into_scales": scalar_muls_into_scales(model)}
    logger.debug("INT8 graph rewrites: %s", counts)
    return counts


class _Index:
    """Producers, consumers and constants of a graph, and the edits planned on it (nodes are
    rewired in place; :meth:`commit` drops the removed ones, keeping the order, and what became
    unused)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        self.graph = model.graph
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producers = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in self.graph.output}
        #: ids of the nodes to drop, and initializers to add, at :meth:`commit`.
        self.removed: set[int] = set()
        self.added: list[Any] = []
        self._array = numpy_helper.to_array

    def produced_by(self, name: str, op_type: str) -> Any:
        node = self.producers.get(name)
        return node if node is not None and node.op_type == op_type and id(node) not in self.removed else None

    def only_consumer(self, name: str, op_type: str) -> Any:
        """The one node reading ``name`` if it is an ``op_type`` (and ``name`` no graph output)."""
        users = self.consumers.get(name, [])
        if name in self.outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]

    def constant(self, name: str) -> np.ndarray | None:
        t = self.initializers.get(name)
        return None if t is None else self._array(t)

    def per_tensor(self, node: Any) -> tuple[float, int, int] | None:
        """(scale, zero point, onnx elem type) of a Q/DQ node with constant per-tensor 8-bit parameters."""
        import onnx

        if len(node.input) < 3 or node.input[2] not in self.initializers:
            return None
        scale, zero = self.constant(node.input[1]), self.initializers[node.input[2]]
        if scale is None or scale.size != 1 or zero.data_type not in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8):
            return None
        return float(scale.ravel()[0]), int(self._array(zero).ravel()[0]), zero.data_type

    def unused_after_removal(self, node: Any) -> bool:
        """Whether every reader of ``node``'s outputs is being removed."""
        return all(out not in self.outputs and all(id(u) in self.removed for u in self.consumers.get(out, []))
                   for out in node.output)

    def commit(self) -> None:
        graph = self.graph
        kept = []
        for node in graph.node:
            if id(node) not in self.removed:
                copy = type(node)()
                copy.CopyFrom(node)
                kept.append(copy)
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(self.added)
        live = {name for node in graph.node for name in node.input} | self.outputs
        for t in [t for t in graph.initializer if t.name not in live]:
            graph.initializer.remove(t)
        names = {name for node in graph.node for name in (*node.input, *node.output)}
        for value in [v for v in graph.value_info if v.name not in names]:
            graph.value_info.remove(value)


def scalar_muls_into_scales(model: onnx.ModelProto) -> int:
    """Fold every multiplication of a quantized tensor by a positive constant scalar into the
    scale of the dequantization after it, in place; returns the count.

    The pattern: ``DQ(xq; s, z) -> Mul(w) -> Q(y) -> DQ(y) -> ...`` where ``w`` is the
    DequantizeLinear of a constant scalar, ``w > 0``, and the Q is the ``Mul``'s only consumer.
    Every DQ of ``y`` then reads ``xq`` with scale ``s * w`` and zero point ``z`` (exactly
    ``w * DQ(xq)``, without the rounding to ``y``'s grid). A ``Mul`` left in float
    (``nodes_to_exclude``) keeps its float weight, so it is not matched and stays as the
    accuracy-aware search left it.
    """
    from onnx import numpy_helper

    g = _Index(model)
    count = 0
    for mul in list(g.graph.node):
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        match = None
        for x_in, w_in in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            dq_x = g.produced_by(x_in, "DequantizeLinear")
            w = _scalar(g, w_in)
            if dq_x is not None and w is not None and w > 0 and g.per_tensor(dq_x) is not None:
                match = (dq_x, w_in, w)
                break
        if match is None:
            continue
        dq_x, w_in, w = match
        q_y = g.only_consumer(mul.output[0], "QuantizeLinear")
        if q_y is None or q_y.output[0] in g.outputs:
            continue
        readers = g.consumers.get(q_y.output[0], [])
        if not readers or any(r.op_type != "DequantizeLinear" or r.input[0] != q_y.output[0] for r in readers):
            continue
        scale = g.constant(dq_x.input[1])
        folded = f"{mul.name or mul.output[0]}/folded_scale"
        g.added.append(numpy_helper.from_array((scale.astype(np.float64) * w).astype(scale.dtype), folded))
        for dq in readers:  # rewired in place: the DQ keeps its name and output
            del dq.input[:]
            dq.input.extend([dq_x.input[0], folded, dq_x.input[2]])
        g.removed.update((id(mul), id(q_y)))
        w_dq = g.produced_by(w_in, "DequantizeLinear")
        for node in (dq_x, w_dq):
            if node is not None and g.unused_after_removal(node):
                g.removed.add(id(node))
        count += 1
    if count:
        g.commit()
        logger.debug("scalar multiplications folded into scales: %d", count)
    return count


#: Pad modes whose output values are input values (so the codes can be padded as they are).
_VALUE_PRESERVING_PADS = ("edge", "reflect", "wrap")


def integer_pads(model: onnx.ModelProto) -> int:
    """Pad quantized tensors as integers, in place; returns the count.

    The pattern: ``DQ(xq; s, z) -> Pad(mode edge/reflect/wrap) -> Q(y; s, z)`` (the Q with the
    same scale and zero point, as calibration gives a pad that only repeats values; its only
    consumer) becomes ``Pad(xq)``. onnxruntime has no QDQ fusion for Pad, so it ran the pad in
    float between a dequantization and a quantization (the replicate pads before the BiFPN's
    max pools).
    """
    g = _Index(model)
    count = 0
    for pad in list(g.graph.node):
        if pad.op_type != "Pad":
            continue
        mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
        dq = g.produced_by(pad.input[0], "DequantizeLinear")
        q = g.only_consumer(pad.output[0], "QuantizeLinear")
        if mode not in _VALUE_PRESERVING_PADS or dq is None or q is None:
            continue
        params = g.per_tensor(dq)
        if params is None or params != g.per_tensor(q):
            continue
        g.removed.add(id(q))
        del pad.output[:]
        pad.output.append(q.output[0])
        pad.input[0] = dq.input[0]
        if dq.output[0] not in g.outputs and all(u is pad for u in g.consumers.get(dq.output[0], [])):
            g.removed.add(id(dq))
        count += 1
    if count:
        g.commit()
        logger.debug("pads on integer codes: %d", count)
    return count


def _scalar(g: _Index, name: str) -> float | None:
    """The value of a quantized constant scalar (a DequantizeLinear of initializers), else None."""
    dq = g.produced_by(name, "DequantizeLinear")
    if dq is None or any(i not in g.initializers for i in dq.input if i):
        return None
    q, scale = g.constant(dq.input[0]), g.constant(dq.input[1])
    zero = g.constant(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros(1)
    if q is None or scale is None or q.size != 1 or scale.size != 1:
        return None
    return float((q.astype(np.float64).ravel()[0] - zero.astype(np.float64).ravel()[0]) * scale.ravel()[0])
