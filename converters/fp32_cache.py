"""The FP32 graph cache the exporters share: each model is traced once per run, whichever
precisions and option variants are made from it."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from edgedet.config import ModelConfig

__all__ = ["Fp32Cache", "model_key"]

T = TypeVar("T")


def model_key(model: Any, config: ModelConfig) -> str:
    """A hash of what an FP32 graph of ``model`` depends on: the configuration, the input size and
    every weight. Two builds of the same weights share it; a weight changed in place does not
    (hashing D0's 16 MB of weights takes milliseconds, a trace seconds)."""
    digest = hashlib.sha256(f"{config!r}|{getattr(model, 'image_size', config.image_size)}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Fp32Cache(Generic[T]):
    """The FP32 graphs (any form: bytes, a proto, an ``ov.Model``) of the last ``size`` models, by
    :func:`model_key`. Exporters drop it in :meth:`converters.base.Exporter.release`."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._graphs: OrderedDict[str, T] = OrderedDict()

    def get(self, model: Any, config: ModelConfig, build: Callable[[], T]) -> T:
        """The cached graph of ``model``, or ``build()``'s (then cached)."""
        key = model_key(model, config)
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return self._graphs[key]
        graph = build()
        self._graphs[key] = graph
        while len(self._graphs) > self.size:
            self._graphs.popitem(last=False)
        return graph

    def put(self, model: Any, config: ModelConfig, graph: T) -> None:
        """Cache ``graph`` as ``model``'s (a graph built elsewhere: another process of a Ray run)."""
        self._graphs[model_key(model, config)] = graph
        while len(self._graphs) > self.size:
            self._graphs.popitem(last=False)

    def clear(self) -> None:
        self._graphs.clear()
