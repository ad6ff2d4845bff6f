"""The PyTorch EfficientDet (torch required; the runtime never imports this package)."""
from edgedet.model.efficientdet import EfficientDet, create_model

__all__ = ["EfficientDet", "create_model"]
