"""edgedet: EfficientDet object detectors on edge devices.

The runtime (this package, minus :mod:`edgedet.model`) needs only numpy, OpenCV and one inference
runtime; torch is imported only by :mod:`edgedet.model` and the converters.
"""
from edgedet.config import VARIANTS, ModelConfig, get_config

__version__ = "0.1.0"
__all__ = ["VARIANTS", "ModelConfig", "get_config", "__version__"]
