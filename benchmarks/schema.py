"""The schema of ``results.json`` (a JSON Schema, draft 2020-12 subset) and a small validator.

:data:`RESULTS_SCHEMA` is the single definition; ``benchmarks/README.md`` explains the fields.
:func:`validate` checks an instance against it with the keywords used here (``type`` — one or a
list —, ``properties``, ``required``, ``additionalProperties``, ``items``, ``enum``, ``minimum``,
``const``), so no package is needed; where ``jsonschema`` is installed the test suite also
checks with it. Bump :data:`SCHEMA_VERSION` when a field changes meaning or is removed; adding an
optional field does not need a bump.
"""
from __future__ import annotations

from typing import Any

from benchmarks.results import STATUSES

__all__ = ["CHECK", "CSV_COLUMNS", "RESULTS_SCHEMA", "SCHEMA_VERSION", "STAGES_MS", "validate"]

SCHEMA_VERSION = 3  # 3: stages_ms/outside_share replace post_ms/post_share; checks
#                      2: the reference rows are backend "torch" (was "pytorch"), speedup_vs_torch

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}
_INT_OR_NULL = {"type": ["integer", "null"]}

#: Latency percentiles in milliseconds over ``runs`` timed calls (edgedet.profiling.LatencyStats).
LATENCY = {
    "type": "object",
    "required": ["p50", "p90", "p99", "mean", "min", "runs"],
    "properties": {"p50": {"type": "number", "minimum": 0}, "p90": {"type": "number", "minimum": 0},
                   "p99": {"type": "number", "minimum": 0}, "mean": {"type": "number", "minimum": 0},
                   "min": {"type": "number", "minimum": 0}, "runs": {"type": "integer", "minimum": 1}},
    "additionalProperties": False,
}
_LATENCY_OR_NULL = {**LATENCY, "type": ["object", "null"]}

#: The end-to-end call's stages (benchmarks.measure.STAGES and the residual), each over the same frames.
STAGES_MS = {
    "type": ["object", "null"],
    "required": ["pre", "infer", "decode", "residual"],
    "properties": {name: LATENCY for name in ("pre", "infer", "decode", "residual")},
    "additionalProperties": False,
}

ROW = {
    "type": "object",
    "required": ["variant", "family", "phi", "backend", "format", "precision", "device", "status", "reason",
                 "input_size", "size_mb", "weights", "model_ms", "e2e_ms", "fps", "stages_ms", "outside_share",
                 "speedup_vs_torch", "speedup_vs_fp32", "parity", "map", "macs", "gflops", "peak_share"],
    "properties": {
        "variant": {"type": "string"},
        "family": {"type": "string", "enum": ["d", "lite"]},
        "phi": {"type": "integer", "minimum": 0},
        "backend": {"type": "string", "enum": ["onnxruntime", "openvino", "tflite", "torch"]},
        "format": _STR_OR_NULL,
        "precision": {"type": "string", "enum": ["fp32", "fp16", "int8"]},
        "device": _STR_OR_NULL,
        "status": {"type": "string", "enum": list(STATUSES)},
        "reason": _STR_OR_NULL,
        "input_size": _INT_OR_NULL,
        "input_layout": _STR_OR_NULL,
        "input_dtype": _STR_OR_NULL,
        "batch": _INT_OR_NULL,
        "num_classes": _INT_OR_NULL,
        "size_mb": _NUM_OR_NULL,
        "weights": {"type": ["string", "null"], "enum": ["reference", "random", "published", "checkpoint", None]},
        "weights_source": _STR_OR_NULL,
        "runtime_version": _STR_OR_NULL,
        "runtime_precision": _STR_OR_NULL,
        "load_seconds": _NUM_OR_NULL,
        "model_ms": _LATENCY_OR_NULL,
        "e2e_ms": _LATENCY_OR_NULL,
        "fps": _NUM_OR_NULL,
        "stages_ms": STAGES_MS,
        "outside_share": _NUM_OR_NULL,
        "speedup_vs_torch": _NUM_OR_NULL,
        "speedup_vs_fp32": _NUM_OR_NULL,
        "parity": {"type": ["object", "null"],
                   "additionalProperties": {"type": ["number", "string", "boolean", "null"]}},
        "map": {"type": ["object", "null"], "required": ["AP", "AP50", "source"],
                "properties": {"AP": _NUM, "AP50": _NUM, "AP75": _NUM, "APs": _NUM, "APm": _NUM, "APl": _NUM,
                               "source": {"type": "string"}, "limit": _INT_OR_NULL,
                               "seconds": _NUM_OR_NULL, "cached": {"type": "boolean"}}},
        "macs": _INT_OR_NULL,
        "gflops": _NUM_OR_NULL,
        "peak_share": _NUM_OR_NULL,
        "artifact": _STR_OR_NULL,
        "sha256": _STR_OR_NULL,
    },
    "additionalProperties": False,
}

#: One measured peak (benchmarks.limits): the best kernel's G(FL)OP/s, which kernel, and every kernel's figures.
_PEAK = {"type": ["object", "null"], "required": ["peak", "winner", "by_kernel"],
         "properties": {"peak": {"type": "number", "minimum": 0}, "winner": {"type": "string"},
                        "by_kernel": {"type": "object", "additionalProperties": {
                            "type": "object", "additionalProperties": _NUM}}}}

#: One performance target checked on the run's rows (benchmarks.targets.Check).
CHECK = {
    "type": "object",
    "required": ["target", "subject", "value", "limit", "at_least", "met", "detail"],
    "properties": {"target": {"type": "string", "enum": ["e2e_vs_torch", "outside_share", "int8_vs_fp32",
                                                          "peak_share"]},
                   "subject": {"type": "string"}, "value": _NUM_OR_NULL, "limit": _NUM,
                   "at_least": {"type": "boolean"}, "met": {"type": ["boolean", "null"]},
                   "detail": {"type": "string"}},
    "additionalProperties": False,
}

_FUSION_LATENCIES = {"type": "object", "required": ["fast_normalized", "softmax", "sum"],
                     "additionalProperties": LATENCY}

RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "edgedet benchmark results",
    "type": "object",
    "required": ["schema_version", "kind", "created", "seconds", "interrupted", "machine", "settings", "export",
                 "context", "rows", "checks"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "kind": {"const": "edgedet-benchmark"},
        "created": {"type": "string"},
        "finished": {"type": "string"},
        "seconds": {"type": "number", "minimum": 0},
        "command": {"type": "string"},
        "interrupted": {"type": "boolean"},
        "not_measured": {"type": "array", "items": {"type": "string"}},
        "machine": {
            "type": "object",
            "required": ["cpu", "cores", "os", "arch", "python", "threads", "runtimes", "packages"],
            "properties": {
                "cpu": {"type": "string"}, "cores": {"type": "integer"}, "os": {"type": "string"},
                "arch": {"type": "string"}, "python": {"type": "string"}, "platform": {"type": "string"},
                "threads": {"type": "integer", "minimum": 1},
                "memory_gb": _NUM_OR_NULL,
                "load_average_start": {"type": ["array", "null"], "items": _NUM},
                "load_average_end": {"type": ["array", "null"], "items": _NUM},
                "runtimes": {"type": "object", "additionalProperties": {"type": "string"}},
                "packages": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "settings": {
            "type": "object",
            "required": ["device", "variants", "backends", "precisions", "threads", "runs", "warmup", "frame_size",
                         "models_dir", "weights"],
            "properties": {
                "device": {"type": "string"},
                "variants": {"type": "array", "items": {"type": "string"}},
                "backends": {"type": "array", "items": {"type": "string"}},
                "precisions": {"type": "array", "items": {"type": "string"}},
                "threads": {"type": "integer", "minimum": 1},
                "runs": {"type": "integer", "minimum": 1},
                "warmup": {"type": "integer", "minimum": 0},
                "max_row_seconds": _NUM_OR_NULL,
                "frame_size": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                "models_dir": {"type": "string"},
                "weights": {"type": "object"},
                "skip_export": {"type": "boolean"},
                "map": {"type": ["object", "null"]},
            },
        },
        "export": {
            "type": "object",
            "required": ["skipped", "seconds", "built", "up_to_date", "failed", "artifacts"],
            "properties": {
                "skipped": {"type": "boolean"}, "seconds": _NUM, "built": {"type": "integer"},
                "up_to_date": {"type": "integer"}, "failed": {"type": "integer"},
                "errors": {"type": "array", "items": {"type": "string"}},
                "artifacts": {"type": "array", "items": {
                    "type": "object", "required": ["variant", "format", "backend", "precision", "status", "seconds"],
                    "properties": {"status": {"type": "string", "enum": ["built", "skipped", "failed"]},
                                   "seconds": _NUM, "export_seconds": _NUM, "error": _STR_OR_NULL}}},
            },
        },
        "context": {
            "type": "object",
            "required": ["limits", "fusion_ablation"],
            "properties": {
                "limits": {"type": ["object", "null"],
                           "required": ["threads", "sizes", "fp32", "int8", "memory", "theoretical"],
                           "properties": {"threads": {"type": "integer"},
                                          "fp32": _PEAK, "int8": _PEAK,
                                          "memory": {"type": "object", "required": ["peak_gbps", "winner", "by_kernel"],
                                                     "properties": {"peak_gbps": {"type": "number", "minimum": 0},
                                                                    "by_kernel": {"type": "object",
                                                                                  "additionalProperties": _NUM}}},
                                          "theoretical": {"type": "object",
                                                          "required": ["fp32_gflops", "int8_gops", "clock_ghz"]}}},
                "fusion_ablation": {
                    "type": ["object", "null"], "required": ["method", "threads", "runs", "paper", "variants"],
                    "properties": {"variants": {"type": "object", "additionalProperties": {
                        "type": "object",
                        "required": ["image_size", "full_ms", "bifpn_ms", "fast_vs_softmax_full",
                                     "fast_vs_softmax_bifpn"],
                        "properties": {"image_size": {"type": "integer"}, "full_ms": _FUSION_LATENCIES,
                                       "bifpn_ms": _FUSION_LATENCIES, "fast_vs_softmax_full": _NUM,
                                       "fast_vs_softmax_bifpn": _NUM, "sum_vs_fast_bifpn": _NUM}}}}},
            },
        },
        "rows": {"type": "array", "items": ROW},
        "checks": {"type": "array", "items": CHECK},
        "plots": {"type": "array", "items": {"type": "string"}},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
}

#: The columns of ``results.csv``, in order (one line per row; latency in ms).
CSV_COLUMNS: tuple[str, ...] = (
    "variant", "family", "phi", "backend", "format", "precision", "device", "status", "input_size",
    "size_mb", "weights", "model_p50_ms", "model_p90_ms", "e2e_p50_ms", "e2e_p90_ms", "runs", "fps",
    "pre_p50_ms", "infer_p50_ms", "decode_p50_ms", "residual_p50_ms", "outside_share", "speedup_vs_torch",
    "speedup_vs_fp32", "cls_cosine", "box_cosine", "top100_agreement", "detection_ap50", "map_ap", "map_ap50",
    "gmacs", "gflops", "peak_share", "runtime_precision", "runtime_version", "load_seconds", "reason",
)

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def validate(instance: Any, schema: dict[str, Any] = RESULTS_SCHEMA, path: str = "$") -> list[str]:
    """Every violation of ``schema`` by ``instance``, as ``"<json path>: <problem>"`` (empty if valid)."""
    errors: list[str] = []
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}, got {instance!r}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(instance, t) for t in types):
            return errors + [f"{path}: expected {'/'.join(types)}, got {type(instance).__name__}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if "minimum" in schema and _is_type(instance, "number") and instance < schema["minimum"]:
        errors.append(f"{path}: {instance} < minimum {schema['minimum']}")
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{path}: missing required field {key!r}")
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in props:
                errors.extend(validate(value, props[key], f"{path}.{key}"))
            elif extra is False:
                errors.append(f"{path}: unexpected field {key!r}")
            elif isinstance(extra, dict):
                errors.extend(validate(value, extra, f"{path}.{key}"))
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            errors.extend(validate(item, schema["items"], f"{path}[{i}]"))
    return errors
