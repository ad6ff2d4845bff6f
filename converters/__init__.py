"""The conversion pipeline: PyTorch EfficientDet → ONNX / OpenVINO / TFLite (and PyTorch reference) artifacts, quantized,
verified against PyTorch, each with a manifest (:mod:`edgedet.manifest`).

Python API::

    from converters import convert
    report = convert("d0,lite0", formats="onnx", precisions="fp32,fp16,int8",
                     weights="published", out_dir="exports", calibration="images/")
    print(report.table())

CLI: ``edgedet-convert --help`` (or ``python -m converters --help``).

INT8 is made by one engine for every backend (:mod:`converters.int8`: full, or accuracy-aware
against one :class:`~converters.accuracy.AccuracyTarget`); each exporter supplies only its recipe.

torch and the exporters' packages are imported lazily, when an export needs them.
"""
from converters.base import EXPORTERS, ArtifactIO, ConvertError, Exporter, get_exporter, register_exporter
from converters.calibration import Calibration, CalibrationError, CalibrationSource, open_calibration_source
from converters.onnx_exporter import OnnxExporter
from converters.openvino_exporter import OpenVinoExporter
from converters.tflite_exporter import TfliteExporter
from converters.torch_exporter import TorchExporter
from converters.pipeline import ArtifactResult, ConvertReport, convert, parse_variants
from converters.weights import WeightsError

__all__ = [
    "EXPORTERS",
    "ArtifactIO",
    "ArtifactResult",
    "Calibration",
    "CalibrationError",
    "CalibrationSource",
    "ConvertError",
    "ConvertReport",
    "Exporter",
    "OnnxExporter",
    "OpenVinoExporter",
    "TfliteExporter",
    "TorchExporter",
    "WeightsError",
    "convert",
    "get_exporter",
    "open_calibration_source",
    "parse_variants",
    "register_exporter",
]
