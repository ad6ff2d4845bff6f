"""The artifact manifest: what a converted model is, how to feed it and decode it, and its hashes.

This module is the single definition of the schema (docs/ARCHITECTURE.md, rule 2). The converters write a
``manifest.json`` beside every model file; the runtime reads it and needs nothing else. Stdlib
only (plus :mod:`edgedet.config`, itself stdlib only), so the torch-free runtime can import it.

On disk an artifact is one directory, ``<root>/<variant>/<backend>-<precision>/`` (see
:func:`artifact_dir`), holding the model file(s) and ``manifest.json``; an artifact made for an
input size other than the variant's native one names it, ``<backend>-<precision>-<size>``::

    exports/d0/onnxruntime-int8/model.onnx
    exports/d0/onnxruntime-int8/manifest.json
    exports/d0/onnxruntime-int8-384/model.onnx + manifest.json
    exports/d0/openvino-fp16/model.xml + model.bin + manifest.json

Schema (version 2); every field is required unless marked *nullable*:

==================  =================================================================================
``schema_version``  ``1`` or ``2``: the lowest version that can describe the artifact is written, so
                    an older edgedet keeps reading what it can feed and refuses the rest (version 2:
                    artifacts that take the frame canvas, ``input.preprocessing`` ``"model"``)
``variant``         config name (``"d0"``, ``"lite0"``...): :func:`edgedet.config.get_config` knows it
``family``          ``"d"`` or ``"lite"``; ``phi`` the compound coefficient (int)
``num_classes``     class count of ``cls_logits``; ``labels`` one name per class (list of str)
``input``           ``name``, ``shape`` (list of int), ``layout`` ``NCHW``/``NHWC``, ``dtype``
                    (``float32``/``float16``/``uint8``/``int8``), ``normalization`` ``{mean, std}``
                    (3 floats each, 0..255 RGB units: ``(pixel - mean) / std``), ``color``
                    (``"RGB"``, or ``"BGR"`` for a frame canvas), ``quantization`` ``{scale,
                    zero_point}`` (*nullable*: set only for integer I/O), ``preprocessing``
                    (version 2; absent in version 1, meaning ``"runtime"``): ``"runtime"`` = the
                    runtime letterboxes, normalizes and lays out the tensor; ``"model"`` = the
                    artifact takes the letterboxed uint8 canvas ``[B,S,S,3]`` (NHWC, channels in
                    ``color`` order, padded with the mean colour) and normalizes inside the graph
                    (``normalization`` says what the graph applies)
``outputs``         list of ``{name, role, shape, dtype, quantization}``, roles ``cls_logits`` [B,N,C]
                    and ``box_regression`` [B,N,4] (each exactly once)
``anchors``         ``min_level``, ``max_level``, ``num_scales``, ``aspect_ratios`` (list of
                    ``[w, h]`` factors), ``anchor_scale``, ``image_size``: enough to rebuild the anchors
``backend``         ``onnxruntime`` / ``openvino`` / ``tflite`` / ``torch``; ``precision`` ``fp32``/``fp16``/``int8``
``files``           ``{relative file name: sha256}``: the model file first (``.onnx``, ``.xml`` +
                    ``.bin``, ``.tflite``, ``.pt``); empty only in a manifest built in memory for a
                    model that has no files (a live PyTorch module), which is never saved
``weights``         ``{source, sha256 (nullable), random}``: where the weights came from
``calibration``     ``{source, count}`` (*nullable*: only quantized artifacts are calibrated)
``float_layers``    names of the layers left in floating point in a quantized graph (list of str)
``parity``          figures measured against PyTorch FP32 at export (``{name: number|str|bool}``)
``accuracy``        ``{map50_95, map50, dataset, images}``: COCO mAP (0..1) of this artifact on an
                    evaluation set given to the converter, ``dataset`` naming the set (optional:
                    absent when none was given)
``tools``           ``{package: version}`` of the exporting toolchain
``options``         ``{name: value}`` (strings) of the exporter settings that shaped the artifact, e.g.
                    ``int8_mode``, ``input_dtype`` (optional on read: ``{}`` when absent)
``created``         ISO 8601 UTC timestamp
``export_key``      hash of everything that determined the artifact: a rerun with the same key skips it
==================  =================================================================================

Reading is strict: unknown schema versions, missing or mistyped fields and unknown enum values
raise :class:`ManifestError` naming the field and what to do. Unknown *extra* fields are ignored
(a field that changes meaning comes with a new ``schema_version``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgedet._atomic import atomic_write_text
from edgedet.config import CONFIGS, AnchorConfig, ModelConfig, Normalization
from edgedet.hub import sha256_file

__all__ = [
    "BACKENDS",
    "DTYPES",
    "LAYOUTS",
    "MANIFEST_NAME",
    "MODEL_SUFFIXES",
    "OUTPUT_ROLES",
    "PRECISIONS",
    "PREPROCESSING",
    "SCHEMA_VERSION",
    "AccuracyInfo",
    "AnchorSpec",
    "CalibrationInfo",
    "InputSpec",
    "Manifest",
    "ManifestError",
    "NormalizationSpec",
    "OutputSpec",
    "Quantization",
    "WeightsInfo",
    "artifact_dir",
    "artifact_dirname",
    "export_key",
    "sha256_file",
    "utc_now",
]

#: The newest version this module writes; :data:`SUPPORTED_SCHEMA_VERSIONS` are those it reads. A
#: manifest is written at the lowest version that describes it (:meth:`InputSpec.schema_version`).
SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2)
MANIFEST_NAME = "manifest.json"

BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino", "tflite", "torch")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC")
DTYPES: tuple[str, ...] = ("float32", "float16", "uint8", "int8")
OUTPUT_ROLES: tuple[str, ...] = ("cls_logits", "box_regression")
COLORS: tuple[str, ...] = ("RGB", "BGR")
#: Who turns the letterboxed frame into the network's tensor: the runtime (``preprocess``), or the
#: model itself (it takes the uint8 canvas). Version 1 manifests have no field: ``"runtime"``.
PREPROCESSING: tuple[str, ...] = ("runtime", "model")
FAMILIES: tuple[str, ...] = ("d", "lite")
#: The suffix of the file a backend loads (the first entry of ``files``). OpenVINO's ``.bin``
#: weights sit beside the ``.xml`` and are listed in ``files`` too.
MODEL_SUFFIXES: dict[str, str] = {"onnxruntime": ".onnx", "openvino": ".xml", "tflite": ".tflite", "torch": ".pt"}

_REEXPORT = "re-export the artifact with edgedet-convert"


class ManifestError(ValueError):
    """A manifest is missing, malformed, of an unsupported version, or does not match its files."""


# ------------------------------------------------------------------------------------ the schema


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of an integer tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class NormalizationSpec:
    """``(pixel - mean) / std`` per channel, in 0..255 RGB units (as :class:`edgedet.config.Normalization`)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, norm: Normalization) -> NormalizationSpec:
        return cls(tuple(float(v) for v in norm.mean), tuple(float(v) for v in norm.std))  # type: ignore[arg-type]


@dataclass(frozen=True)
class InputSpec:
    """The one input tensor of an artifact and how to fill it (see :func:`edgedet.preprocess.prepare`).

    ``preprocessing="runtime"``: a normalized tensor (letterbox, colour, normalization, layout done
    by :func:`edgedet.preprocess.preprocess`). ``"model"``: the letterboxed uint8 canvas, NHWC, in
    ``color`` order; the graph applies ``normalization`` itself.
    """

    name: str
    shape: tuple[int, ...]
    layout: str  # NCHW | NHWC
    dtype: str  # float32 | float16 | uint8 | int8
    normalization: NormalizationSpec
    color: str = "RGB"
    quantization: Quantization | None = None
    preprocessing: str = "runtime"  # runtime | model

    @property
    def takes_frames(self) -> bool:
        """The artifact takes the uint8 frame canvas and preprocesses inside the graph."""
        return self.preprocessing == "model"

    @property
    def schema_version(self) -> int:
        """The lowest manifest version that describes this input (2 for a frame canvas)."""
        return 2 if self.takes_frames else 1

    @property
    def image_size(self) -> int:
        """The square input side (from ``shape`` and ``layout``)."""
        return self.shape[2] if self.layout == "NCHW" else self.shape[1]

    @property
    def batch_size(self) -> int:
        return self.shape[0]


@dataclass(frozen=True)
class OutputSpec:
    """One output tensor: ``role`` says which of the model's two outputs it is."""

    name: str
    role: str  # cls_logits | box_regression
    shape: tuple[int, ...]
    dtype: str
    quantization: Quantization | None = None


@dataclass(frozen=True)
class AnchorSpec:
    """The anchor layout, enough for :func:`edgedet.anchors.generate_anchors` without the table."""

    min_level: int
    max_level: int
    num_scales: int
    aspect_ratios: tuple[tuple[float, float], ...]
    anchor_scale: float
    image_size: int

    @classmethod
    def from_config(cls, config: ModelConfig) -> AnchorSpec:
        a = config.anchors
        return cls(a.min_level, a.max_level, a.num_scales,
                   tuple((float(w), float(h)) for w, h in a.aspect_ratios), float(a.anchor_scale),
                   int(config.image_size))

    def to_config(self) -> AnchorConfig:
        return AnchorConfig(min_level=self.min_level, max_level=self.max_level,
                            num_scales=self.num_scales, aspect_ratios=self.aspect_ratios,
                            anchor_scale=self.anchor_scale)

    @property
    def num_anchors(self) -> int:
        """Rows of the model's outputs: Σ over levels of side² × anchors per cell."""
        size, sides = self.image_size, []
        for _ in range(self.max_level):
            size = math.ceil(size / 2)
            sides.append(size)
        per_cell = self.num_scales * len(self.aspect_ratios)
        return sum(s * s for s in sides[self.min_level - 1:]) * per_cell


@dataclass(frozen=True)
class WeightsInfo:
    """Where the weights came from: a checkpoint (with its file's sha256) or a random init."""

    source: str
    sha256: str | None
    random: bool


@dataclass(frozen=True)
class CalibrationInfo:
    """The data a quantized artifact was calibrated on."""

    source: str
    count: int


@dataclass(frozen=True)
class AccuracyInfo:
    """COCO mAP of the artifact itself, measured by the converter on an evaluation set."""

    map50_95: float  #: COCO AP@[.5:.95], 0..1
    map50: float  #: AP@.5, 0..1
    dataset: str  #: which set: the annotation file's name and the start of its sha256
    images: int  #: images scored


@dataclass(frozen=True)
class Manifest:
    """One artifact: a variant exported for one backend at one precision. See the module doc.

    The mapping fields (``files``, ``parity``, ``tools``, ``options``) are plain dicts: treat them as read-only.
    """

    variant: str
    family: str
    phi: int
    num_classes: int
    labels: tuple[str, ...]
    input: InputSpec
    outputs: tuple[OutputSpec, ...]
    anchors: AnchorSpec
    backend: str
    precision: str
    files: dict[str, str]
    weights: WeightsInfo
    calibration: CalibrationInfo | None = None
    float_layers: tuple[str, ...] = ()
    parity: dict[str, Any] = field(default_factory=dict)
    accuracy: AccuracyInfo | None = None
    tools: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    created: str = ""
    export_key: str = ""
    #: ``None``: the lowest version that describes this manifest (what :meth:`save` writes).
    schema_version: int | None = None

    def __post_init__(self) -> None:
        if self.schema_version is None:
            object.__setattr__(self, "schema_version", self.input.schema_version)
        # Validate what a caller builds too, not only what is read from disk.
        _validate_manifest(self, "manifest")

    # ------------------------------------------------------------------------------- helpers

    @property
    def in_memory(self) -> bool:
        """This manifest describes a model held in memory (a live PyTorch module): it lists no files."""
        return not self.files

    @property
    def model_file(self) -> str:
        """The relative name of the file the backend loads (``model.onnx``, ``model.xml``...)."""
        if self.in_memory:
            raise ManifestError(f"{self.artifact_name} describes a model held in memory: it has no model file")
        return next(iter(self.files))

    def model_path(self, directory: str | os.PathLike[str]) -> Path:
        """The model file inside the artifact ``directory``."""
        return Path(directory) / self.model_file

    def file_paths(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Every file listed in ``files``, inside ``directory``."""
        return [Path(directory) / name for name in self.files]

    def output(self, role: str) -> OutputSpec:
        """The output with ``role`` (``"cls_logits"`` or ``"box_regression"``)."""
        for out in self.outputs:
            if out.role == role:
                return out
        raise KeyError(role)  # unreachable for a validated manifest

    @property
    def image_size(self) -> int:
        return self.anchors.image_size

    @property
    def artifact_name(self) -> str:
        """``<variant>/<backend>-<precision>`` (``-<size>`` when not the variant's native input
        size): how reports and logs name this artifact, as :func:`artifact_dir` names its directory."""
        return f"{self.variant}/{artifact_dir('', self.variant, self.backend, self.precision, self.image_size).name}"

    def model_config(self) -> ModelConfig:
        """A :class:`~edgedet.config.ModelConfig` for the anchors, normalization and class count.

        ``edgedet.anchors.generate_anchors(manifest.model_config())`` gives exactly the anchors the
        artifact was exported with: the anchor settings, image size, class count and normalization
        come from this manifest, not from the table. For a variant the table knows, the other
        fields (backbone, BiFPN) are the table's; for an unknown one (a newer converter's variant)
        they are placeholders that anchor generation and decoding never read.
        """
        base = CONFIGS.get(self.variant)
        if base is None:
            base = CONFIGS["d0" if self.family == "d" else "lite0"].with_(
                name=self.variant, family=self.family, phi=self.phi)
        return base.with_(
            image_size=self.anchors.image_size, anchors=self.anchors.to_config(),
            num_classes=self.num_classes,
            normalization=Normalization(mean=self.input.normalization.mean,
                                        std=self.input.normalization.std),
        )

    # ------------------------------------------------------------------------------- (de)serialize

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (lists for tuples), keys in schema order, ``schema_version`` first.
        Version 1 has no ``input.preprocessing`` (an older reader would ignore it, not refuse it)."""
        data = asdict(self)
        if data["accuracy"] is None:
            del data["accuracy"]  # optional: a manifest without it reads as before
        out: dict[str, Any] = {"schema_version": data.pop("schema_version")}
        out.update(data)
        if out["schema_version"] < 2:
            del out["input"]["preprocessing"]
        return _jsonable(out)

    def to_json(self) -> str:
        """Indented JSON, with lists of plain values (labels, shapes) kept on one line."""
        return _dumps(self.to_dict()) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "manifest") -> Manifest:
        """Build and validate a manifest from parsed JSON; :class:`ManifestError` if it is not one."""
        return _parse_manifest(data, where)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read ``path`` (a ``manifest.json`` or the artifact directory holding one) and validate it."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ManifestError(f"no manifest at {path}: an artifact directory holds the model file "
                                f"and {MANIFEST_NAME}; point at one written by edgedet-convert "
                                f"(or {_REEXPORT})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON ({exc}); the file is damaged or not a "
                                f"manifest: {_REEXPORT}") from exc
        return _parse_manifest(data, str(path))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``manifest.json`` into ``directory`` atomically; return its path."""
        if self.in_memory:
            raise ManifestError(f"{self.artifact_name} describes a model held in memory (no files): "
                                "export it (edgedet-convert --formats torch) to get an artifact to save")
        return atomic_write_text(Path(directory) / MANIFEST_NAME, self.to_json())

    # ------------------------------------------------------------------------------- integrity

    def verify_files(self, directory: str | os.PathLike[str]) -> None:
        """Check that every listed file exists in ``directory`` with its recorded sha256.

        Raises :class:`ManifestError` naming the first file that is missing or differs.
        """
        directory = Path(directory)
        for name, expected in self.files.items():
            path = directory / name
            if not path.is_file():
                raise ManifestError(f"{self.artifact_name}: file {name!r} listed in the manifest is "
                                    f"missing from {directory}; re-export or re-copy the bundle")
            actual = sha256_file(path)
            if actual != expected:
                raise ManifestError(
                    f"{self.artifact_name}: {path} does not match its manifest (sha256 expected "
                    f"{expected}, actual {actual}); the file is truncated, damaged or was replaced: "
                    f"re-export or re-copy the bundle")

    def files_match(self, directory: str | os.PathLike[str]) -> bool:
        """``True`` when :meth:`verify_files` passes."""
        try:
            self.verify_files(directory)
        except ManifestError:
            return False
        return True


# ------------------------------------------------------------------------------------ helpers


def artifact_dirname(backend: str, precision: str, image_size: int | None = None) -> str:
    """The directory name of one artifact of a variant: ``<backend>-<precision>``, and
    ``-<image_size>`` when one is given (:func:`artifact_dir` gives it only for a non-native size)."""
    return f"{backend}-{precision}" + ("" if image_size is None else f"-{image_size}")


def artifact_dir(root: str | os.PathLike[str], variant: str, backend: str, precision: str,
                 image_size: int | None = None) -> Path:
    """Where an artifact lives under an export root: ``<root>/<variant>/<backend>-<precision>``, or
    ``.../<backend>-<precision>-<image_size>`` for an input size other than the variant's native one."""
    return Path(root) / variant / artifact_dirname(backend, precision, _size_suffix(variant, image_size))


def _size_suffix(variant: str, image_size: int | None) -> int | None:
    """``image_size`` when a name must carry it (not the native size of a variant the table knows)."""
    config = CONFIGS.get(variant)
    return None if image_size is None or (config is not None and config.image_size == image_size) else image_size


def export_key(**inputs: Any) -> str:
    """A stable hash (hex sha256) of everything that determines an artifact.

    Pass JSON-serializable values (variant, weights hash, backend, precision, calibration, tool
    versions, options...). Key order does not matter; the schema version is always included.
    """
    payload = {"schema_version": SCHEMA_VERSION, **inputs}
    text = json.dumps(_jsonable(payload), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def utc_now() -> str:
    """The current time as ISO 8601 UTC with a ``Z`` suffix, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _dumps(value: Any, indent: str = "") -> str:
    inner = indent + "  "
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = (f"{inner}{json.dumps(k)}: {_dumps(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        if all(isinstance(v, list) and not any(isinstance(x, (dict, list)) for x in v) for v in value):
            return json.dumps(value, allow_nan=False)  # e.g. aspect_ratios: [[1.0, 1.0], ...]
        return "[\n" + ",\n".join(f"{inner}{_dumps(v, inner)}" for v in value) + f"\n{indent}]"
    return json.dumps(value, allow_nan=False, ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# ------------------------------------------------------------------------------------ validation


def _fail(where: str, field_name: str, problem: str, fix: str = _REEXPORT) -> ManifestError:
    return ManifestError(f"{where}: field {field_name!r} {problem}; {fix}")


class _Reader:
    """Typed access to one JSON object with messages that name the full field path."""

    def __init__(self, data: Any, where: str, prefix: str = "") -> None:
        self.where, self.prefix = where, prefix
        if not isinstance(data, Mapping):
            name = prefix.rstrip(".") or "(top level)"
            raise _fail(where, name, f"must be a JSON object, got {_type(data)}")
        self.data = data

    def path(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def get(self, key: str, *, nullable: bool = False, default: Any = ...) -> Any:
        if key not in self.data:
            if default is not ...:
                return default
            raise _fail(self.where, self.path(key), "is missing")
        value = self.data[key]
        if value is None and not nullable:
            raise _fail(self.where, self.path(key), "must not be null")
        return value

    def text(self, key: str, *, choices: Sequence[str] | None = None, nullable: bool = False) -> Any:
        value = self.get(key, nullable=nullable)
        if value is None:
            return None
        if not isinstance(value, str):
            raise _fail(self.where, self.path(key), f"must be a string, got {_type(value)}")
        if choices is not None and value not in choices:
            raise _fail(self.where, self.path(key),
                        f"must be one of {', '.join(choices)}, got {value!r}",
                        "this edgedet may be older than the converter that wrote it (upgrade edgedet) "
                        f"or the file was edited by hand ({_REEXPORT})")
        return value

    def integer(self, key: str, *, minimum: int | None = None) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(self.where, self.path(key), f"must be an integer, got {_type(value)}")
        if minimum is not None and value < minimum:
            raise _fail(self.where, self.path(key), f"must be >= {minimum}, got {value}")
        return value

    def number(self, key: str) -> float:
        value = self.get(key)
        return _as_float(value, self.where, self.path(key))

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise _fail(self.where, self.path(key), f"must be true or false, got {_type(value)}")
        return value

    def array(self, key: str, *, nullable: bool = False) -> Any:
        value = self.get(key, nullable=nullable)
        if value is None:
            return None
        if not isinstance(value, list):
            raise _fail(self.where, self.path(key), f"must be a list, got {_type(value)}")
        return value

    def obj(self, key: str, *, nullable: bool = False) -> _Reader | None:
        value = self.get(key, nullable=nullable)
        if value is None:
            return None
        return _Reader(value, self.where, f"{self.path(key)}.")

    def str_list(self, key: str) -> tuple[str, ...]:
        items = self.array(key)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise _fail(self.where, f"{self.path(key)}[{i}]", f"must be a string, got {_type(item)}")
        return tuple(items)

    def shape(self, key: str) -> tuple[int, ...]:
        items = self.array(key)
        if not items or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in items):
            raise _fail(self.where, self.path(key), f"must be a non-empty list of positive integers, "
                        f"got {items!r}")
        return tuple(items)

    def str_map(self, key: str, *, nullable: bool = False, default: Any = ...) -> dict[str, str] | None:
        value = self.get(key, nullable=nullable, default=default)
        if value is None:
            return None
        if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise _fail(self.where, self.path(key), "must be an object of string values")
        return dict(value)


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _as_float(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, name, f"must be a finite number, got {value!r}")
    return float(value)


def _parse_quantization(reader: _Reader, key: str) -> Quantization | None:
    q = reader.obj(key, nullable=True)
    if q is None:
        return None
    return Quantization(scale=q.number("scale"), zero_point=q.integer("zero_point"))


def _parse_triple(reader: _Reader, key: str) -> tuple[float, float, float]:
    items = reader.array(key)
    if len(items) != 3:
        raise _fail(reader.where, reader.path(key), f"must hold 3 numbers (R, G, B), got {items!r}")
    return tuple(_as_float(v, reader.where, f"{reader.path(key)}[{i}]")  # type: ignore[return-value]
                 for i, v in enumerate(items))


def _parse_manifest(data: Any, where: str) -> Manifest:
    top = _Reader(data, where)
    version = top.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _fail(where, "schema_version", f"must be an integer, got {_type(version)}")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        newer = version > max(SUPPORTED_SCHEMA_VERSIONS)
        raise _fail(where, "schema_version",
                    f"is {version}, but this edgedet reads only version "
                    f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}",
                    "upgrade edgedet on this device" if newer else _REEXPORT)

    inp = top.obj("input")
    norm = inp.obj("normalization")
    # Version 1 has no preprocessing field: the runtime preprocesses. One there that says otherwise
    # is refused, not ignored: a version 1 reader would feed such an artifact the wrong input.
    if version >= 2:
        preprocessing = inp.text("preprocessing", choices=PREPROCESSING)
    else:
        preprocessing = "runtime"
        if inp.data.get("preprocessing", "runtime") != "runtime":
            raise _fail(where, "input.preprocessing", f"is {inp.data['preprocessing']!r} in a version "
                        f"{version} manifest, which cannot say that (version 2 can)")
    input_spec = InputSpec(
        name=inp.text("name"), shape=inp.shape("shape"), layout=inp.text("layout", choices=LAYOUTS),
        dtype=inp.text("dtype", choices=DTYPES),
        normalization=NormalizationSpec(mean=_parse_triple(norm, "mean"), std=_parse_triple(norm, "std")),
        color=inp.text("color", choices=COLORS), quantization=_parse_quantization(inp, "quantization"),
        preprocessing=preprocessing,
    )

    outputs = []
    for i, item in enumerate(top.array("outputs")):
        out = _Reader(item, where, f"outputs[{i}].")
        outputs.append(OutputSpec(
            name=out.text("name"), role=out.text("role", choices=OUTPUT_ROLES), shape=out.shape("shape"),
            dtype=out.text("dtype", choices=DTYPES), quantization=_parse_quantization(out, "quantization"),
        ))

    anc = top.obj("anchors")
    ratios = []
    for i, pair in enumerate(anc.array("aspect_ratios")):
        name = f"anchors.aspect_ratios[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise _fail(where, name, f"must be a [width, height] pair, got {pair!r}")
        ratios.append((_as_float(pair[0], where, name), _as_float(pair[1], where, name)))
    anchors = AnchorSpec(
        min_level=anc.integer("min_level", minimum=1), max_level=anc.integer("max_level", minimum=1),
        num_scales=anc.integer("num_scales", minimum=1), aspect_ratios=tuple(ratios),
        anchor_scale=anc.number("anchor_scale"), image_size=anc.integer("image_size", minimum=1),
    )

    w = top.obj("weights")
    weights = WeightsInfo(source=w.text("source"), sha256=w.text("sha256", nullable=True),
                          random=w.flag("random"))
    c = top.obj("calibration", nullable=True)
    calibration = None if c is None else CalibrationInfo(source=c.text("source"),
                                                          count=c.integer("count", minimum=1))
    parity = top.get("parity")
    if not isinstance(parity, Mapping):
        raise _fail(where, "parity", f"must be an object, got {_type(parity)}")
    files = top.str_map("files")
    if not files:  # only a manifest built in memory (a live module) lists none
        raise _fail(where, "files", "must list at least the model file")
    created = top.text("created")
    try:
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise _fail(where, "created", f"must be an ISO 8601 time, got {created!r}") from None
    key = top.text("export_key")
    if not _is_sha256(key):
        raise _fail(where, "export_key", f"must be a hex sha256, got {key!r}")

    a = top.obj("accuracy", nullable=True) if "accuracy" in top.data else None
    accuracy = None if a is None else AccuracyInfo(
        map50_95=a.number("map50_95"), map50=a.number("map50"), dataset=a.text("dataset"),
        images=a.integer("images", minimum=1))

    fields = dict(
        schema_version=version,
        variant=top.text("variant"), family=top.text("family", choices=FAMILIES),
        phi=top.integer("phi", minimum=0), num_classes=top.integer("num_classes", minimum=1),
        labels=top.str_list("labels"), input=input_spec, outputs=tuple(outputs), anchors=anchors,
        backend=top.text("backend", choices=BACKENDS), precision=top.text("precision", choices=PRECISIONS),
        files=files, weights=weights, calibration=calibration, float_layers=top.str_list("float_layers"),
        parity=dict(parity), accuracy=accuracy, tools=top.str_map("tools") or {},
        options=top.str_map("options", default={}) or {}, created=created, export_key=key,
    )
    try:
        return Manifest(**fields)
    except ManifestError as exc:  # the cross-field checks say "manifest:"; name the file instead
        raise ManifestError(f"{where}{str(exc)[len('manifest'):]}") from None


def _validate_manifest(m: Manifest, where: str) -> None:
    """Cross-field checks (run for parsed and for constructed manifests)."""
    def check(ok: bool, name: str, problem: str) -> None:
        if not ok:
            raise _fail(where, name, problem)

    check(m.schema_version in SUPPORTED_SCHEMA_VERSIONS, "schema_version",
          f"is {m.schema_version!r}; supported: {SUPPORTED_SCHEMA_VERSIONS}")
    for name, value, choices in (("family", m.family, FAMILIES), ("backend", m.backend, BACKENDS),
                                 ("precision", m.precision, PRECISIONS),
                                 ("input.layout", m.input.layout, LAYOUTS),
                                 ("input.dtype", m.input.dtype, DTYPES),
                                 ("input.color", m.input.color, COLORS),
                                 ("input.preprocessing", m.input.preprocessing, PREPROCESSING)):
        check(value in choices, name, f"must be one of {', '.join(choices)}, got {value!r}")
    check(m.schema_version >= m.input.schema_version, "schema_version",
          f"is {m.schema_version}, but an artifact that takes the frame canvas (input.preprocessing "
          f"'model') needs version {m.input.schema_version}")
    if m.input.takes_frames:
        check(m.input.layout == "NHWC" and m.input.dtype == "uint8" and m.input.quantization is None,
              "input", "takes the frame canvas (preprocessing 'model'), so it must be NHWC uint8 without "
              f"quantization, got {m.input.layout} {m.input.dtype}"
              + (" with quantization" if m.input.quantization is not None else ""))
    else:
        check(m.input.color == "RGB", "input.color",
              f"is {m.input.color!r}, but the runtime's preprocessing makes RGB tensors (only an artifact "
              "that takes the frame canvas may say BGR)")
    check(isinstance(m.variant, str) and bool(m.variant), "variant", "must be a non-empty string")
    check(len(m.labels) == m.num_classes, "labels",
          f"has {len(m.labels)} names but num_classes is {m.num_classes}")
    check(len(m.input.shape) == 4, "input.shape", f"must be [batch, ...] of 4 dims, got {list(m.input.shape)}")
    channels = m.input.shape[1] if m.input.layout == "NCHW" else m.input.shape[3]
    check(channels == 3, "input.shape", f"has {channels} channels for layout {m.input.layout}; expected 3")
    size = m.input.image_size
    other = m.input.shape[3] if m.input.layout == "NCHW" else m.input.shape[2]
    check(size == m.anchors.image_size and other == size,
          "input.shape", f"{list(m.input.shape)} is not the square {m.anchors.image_size} input of "
          f"anchors.image_size")
    check(all(s > 0 for s in m.input.normalization.std), "input.normalization.std", "must be positive")
    check(m.anchors.min_level <= m.anchors.max_level, "anchors.min_level", "must be <= max_level")
    check(len(m.anchors.aspect_ratios) > 0, "anchors.aspect_ratios", "must not be empty")
    roles = [o.role for o in m.outputs]
    check(sorted(roles) == sorted(OUTPUT_ROLES), "outputs",
          f"must hold one output of each role {OUTPUT_ROLES}, got roles {roles}")
    rows = m.anchors.num_anchors
    for i, out in enumerate(m.outputs):
        check(out.role in OUTPUT_ROLES, f"outputs[{i}].role", f"must be one of {OUTPUT_ROLES}")
        check(out.dtype in DTYPES, f"outputs[{i}].dtype", f"must be one of {DTYPES}")
        width = m.num_classes if out.role == "cls_logits" else 4
        check(len(out.shape) == 3 and out.shape[1:] == (rows, width), f"outputs[{i}].shape",
              f"is {list(out.shape)}, but the anchors and classes give [batch, {rows}, {width}]")
    check(not m.in_memory or m.backend == "torch", "files",
          "must list at least the model file (only a live torch module has none)")
    suffix = MODEL_SUFFIXES[m.backend]
    check(m.in_memory or m.model_file.endswith(suffix), "files",
          f"must list the {m.backend} model file (*{suffix}) first, got {list(m.files)}")
    for name, digest in m.files.items():
        check(_is_relative_name(name), "files", f"has {name!r}: names must be relative, inside the "
              "artifact directory")
        check(_is_sha256(digest), f"files[{name!r}]", f"must be a hex sha256, got {digest!r}")
    check(m.weights.sha256 is None or _is_sha256(m.weights.sha256), "weights.sha256",
          f"must be a hex sha256 or null, got {m.weights.sha256!r}")
    if m.accuracy is not None:
        for name in ("map50_95", "map50"):
            value = getattr(m.accuracy, name)
            check(isinstance(value, (int, float)) and 0.0 <= value <= 1.0, f"accuracy.{name}",
                  f"must be a COCO mAP in 0..1, got {value!r}")
        check(isinstance(m.accuracy.dataset, str) and bool(m.accuracy.dataset), "accuracy.dataset",
              "must name the evaluation set")
        check(isinstance(m.accuracy.images, int) and m.accuracy.images >= 1, "accuracy.images",
              f"must be a positive image count, got {m.accuracy.images!r}")
    check(m.precision != "int8" or m.calibration is not None, "calibration",
          "must be set for an int8 artifact (the data it was calibrated on)")


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _is_relative_name(name: str) -> bool:
    p = Path(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name
