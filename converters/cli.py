"""``edgedet-convert``: export EfficientDet variants to edge formats, quantize, verify, write manifests."""
from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from converters.accuracy import AccuracyTarget
from converters.base import EXPORTERS, ConvertError
from converters.pipeline import DEFAULT_CALIBRATION_COUNT, DEFAULT_VERIFY_IMAGES, INT8_MODES, convert
from edgedet.config import VARIANTS
from edgedet.manifest import PRECISIONS

__all__ = ["build_parser", "main"]

_EXAMPLES = """\
examples:
  # every precision of D0 and Lite0 to ONNX, published COCO weights, calibrated on your images
  edgedet-convert --variants d0,lite0 --formats onnx --calibration ~/frames/

  # D0..D3 at FP32 and FP16 only (no calibration needed)
  edgedet-convert --variants d0-d3 --precisions fp32,fp16

  # random weights, for latency profiling on a device (recorded as random in the manifests)
  edgedet-convert --variants lite0-lite4 --weights random --allow-random --calibration synthetic

  # your own checkpoint (one variant), calibrated on 200 frames of a video, into ./models
  edgedet-convert --variants d1 --weights runs/d1/best.pth --num-classes 3 --labels labels.txt \\
      --calibration street.mp4 --calibration-count 200 --out models

  # a checkpoint from edgedet-train: its class names and training size are used as they are
  edgedet-convert --variants lite0 --weights runs/lite0/best.pth --formats onnx,tflite \\
      --calibration data/train

  # accuracy-aware INT8 (the default for trained weights) held to detection AP50 >= 0.97
  edgedet-convert --variants d0 --formats onnx,openvino,tflite --precisions int8 \\
      --accuracy-ap50 0.97 --calibration ~/frames/

  # D0 at three input sizes (a finer speed/accuracy trade-off for the Detector), each artifact's
  # mAP measured on your validation set and recorded in its manifest
  edgedet-convert --variants d0 --image-sizes 384,native,640 --calibration ~/frames/ \
      --eval-ann data/annotations/val.json --eval-images data/val

  # fully quantized INT8 with uint8 input for an integer-only accelerator (TFLite)
  edgedet-convert --variants lite0 --formats tflite --precisions int8 --int8-mode full \\
      --input tensor --tflite-input-dtype uint8 --calibration ~/frames/

  # artifacts that take the normalized float tensor instead of the frame (the runtime normalizes)
  edgedet-convert --variants lite0 --formats onnx --input tensor --calibration ~/frames/

input:
  By default ONNX, OpenVINO and TFLite artifacts take the letterboxed uint8 frame (BGR, NHWC) and
  do colour order, normalization and layout inside the model (manifest input.preprocessing
  "model", schema version 2: an older edgedet refuses them and asks to be upgraded); --input
  tensor makes artifacts that take the normalized float tensor.

output:
  <out>/<variant>/<backend>-<precision>/ holds the model file(s) and manifest.json, e.g.
  exports/d0/onnxruntime-int8/model.onnx; an input size other than the variant's native one is
  named: exports/d0/onnxruntime-int8-384/. A rerun skips artifacts whose inputs are unchanged and
  whose files still match their hashes (--force rebuilds). An artifact below its parity thresholds
  is kept as <backend>-<precision>.failed/ and makes the command exit with status 1.
"""


def _image_size(text: str) -> int | str:
    if text == "native":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels or 'native', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgedet-convert",
        description=textwrap.dedent("""\
            Convert EfficientDet variants to edge inference formats, quantize them, check each
            artifact against PyTorch FP32 on held-out images, and write a manifest beside it."""),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to convert")
    what.add_argument("--variants", required=True, metavar="LIST",
                      help=f"comma-separated variants or ranges (d0-d3, lite0-lite2) or 'all'; "
                           f"known: {', '.join(VARIANTS)}")
    what.add_argument("--formats", default="onnx", metavar="LIST",
                      help=f"comma-separated formats (default: onnx; available: {', '.join(EXPORTERS)})")
    what.add_argument("--precisions", default=",".join(PRECISIONS), metavar="LIST",
                      help="comma-separated precisions (default: %(default)s); int8 needs --calibration")
    what.add_argument("--input", choices=("frame", "tensor"), dest="input_kind",
                      help="what the artifacts take: 'frame' (default for onnx, openvino, tflite): the "
                           "letterboxed uint8 BGR frame, colour order, normalization and layout done "
                           "inside the model; 'tensor': the normalized float tensor (torch: tensor only)")

    src = parser.add_argument_group("weights")
    src.add_argument("--weights", default="published", metavar="SOURCE",
                     help="'published' (default: each variant's effdet COCO checkpoint, downloaded and "
                          "cached), 'random', a checkpoint file, a URL, or a checkpoint name such "
                          "as tf_efficientdet_d0")
    src.add_argument("--allow-random", action="store_true",
                     help="confirm --weights random: such artifacts detect nothing and are only for "
                          "latency profiling and pipeline tests (recorded in the manifest)")
    src.add_argument("--seed", type=int, default=0, help="seed of random weights (default: 0)")
    src.add_argument("--num-classes", type=int, metavar="N",
                     help="classes of the model (default: the checkpoint's; 90 for random weights)")
    src.add_argument("--labels", type=Path, metavar="FILE",
                     help="text file with one class name per line (default: the class names stored by "
                          "edgedet-train, else class_0, class_1, ...)")
    sizes = src.add_mutually_exclusive_group()
    sizes.add_argument("--image-size", type=_image_size, metavar="PX",
                       help="input side, a multiple of 32, or 'native' (default: the size the checkpoint "
                            "was trained at by edgedet-train, else the variant's native size)")
    sizes.add_argument("--image-sizes", metavar="LIST",
                       help="several input sides, e.g. 384,native,640: each is its own artifact per format "
                            "and precision (<backend>-<precision>-<size>/ unless native); the Detector "
                            "chooses among sizes as among variants")

    q = parser.add_argument_group("quantization")
    q.add_argument("--int8-mode", choices=INT8_MODES,
                   help="'full': every layer in INT8; 'accuracy-aware': the units whose quantization "
                        "hurts most stay float until the detections agree with FP32's to the target "
                        "below (recorded in the manifest's float_layers). Default: full for --weights "
                        "random, else accuracy-aware, on every format")
    default = AccuracyTarget()
    q.add_argument("--accuracy-ap50", type=float, metavar="X",
                   help=f"accuracy-aware target: detection AP50 against PyTorch FP32's detections "
                        f"(default: {default.detection_ap50:g})")
    q.add_argument("--accuracy-cls-cosine", type=float, metavar="X",
                   help=f"accuracy-aware floor on the class logits' cosine (default: {default.cls_cosine:g})")
    q.add_argument("--accuracy-box-cosine", type=float, metavar="X",
                   help=f"accuracy-aware floor on the box regressions' cosine (default: {default.box_cosine:g})")
    q.add_argument("--accuracy-images", type=int, metavar="N",
                   help=f"held-out calibration frames the target is measured on "
                        f"(default: {default.validation_images})")
    q.add_argument("--tflite-input-dtype", choices=("float32", "int8", "uint8"),
                   help="input of TFLite INT8 models (default: float32, quantized inside the graph; "
                        "int8/uint8 for integer-only accelerators)")

    cal = parser.add_argument_group("calibration and verification")
    cal.add_argument("--calibration", metavar="SOURCE",
                     help="images for INT8 calibration: a folder of images, a video file, or "
                          "'synthetic' (built-in scenes; fine for random weights, not for accuracy). "
                          "Part of it is held out for the parity check")
    cal.add_argument("--calibration-count", type=int, default=DEFAULT_CALIBRATION_COUNT, metavar="N",
                     help="calibration images per INT8 artifact (default: %(default)s)")
    cal.add_argument("--verify-images", type=int, default=DEFAULT_VERIFY_IMAGES, metavar="N",
                     help="held-out images for the parity check (default: %(default)s)")

    ev = parser.add_argument_group("evaluation (optional)")
    ev.add_argument("--eval-ann", type=Path, metavar="FILE",
                    help="COCO annotation file: each artifact's mAP on it is measured through the runtime's "
                         "pipeline and recorded in its manifest (the Detector ranks by it); needs --eval-images")
    ev.add_argument("--eval-images", type=Path, metavar="DIR", help="the folder of --eval-ann's images")
    ev.add_argument("--eval-limit", type=int, metavar="N", help="score only the first N images")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("exports"), metavar="DIR",
                     help="export root directory (default: %(default)s)")
    out.add_argument("--force", action="store_true", help="rebuild artifacts that are up to date")
    run = parser.add_argument_group("where the work runs")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local: this process (default); ray: each artifact a task of a Ray cluster, the files "
                          "published here (needs pip install 'edgedet[ray]')")
    run.add_argument("--ray-address", metavar="HOST:PORT",
                     help="the Ray cluster (default: $RAY_ADDRESS, else a cluster started on this machine)")
    out.add_argument("-q", "--quiet", action="store_true", help="print only the summary and errors")
    out.add_argument("-v", "--verbose", action="store_true", help="log every step (and tracebacks)")
    return parser


def _exporter_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The per-format exporter options the command line asks for (``convert(exporter_options=)``)."""
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    options: dict[str, dict[str, Any]] = {}
    if args.tflite_input_dtype:
        if "tflite" not in formats:
            parser.error("--tflite-input-dtype needs tflite in --formats")
        if args.input_kind != "tensor" and args.tflite_input_dtype != "float32":
            parser.error("--tflite-input-dtype int8/uint8 quantizes the normalized tensor input: add --input tensor "
                         "(a frame-input artifact takes uint8 pixels already)")
        options["tflite"] = {"input_dtype": args.tflite_input_dtype}
    given = {field: value for field, value in (
        ("detection_ap50", args.accuracy_ap50), ("cls_cosine", args.accuracy_cls_cosine),
        ("box_cosine", args.accuracy_box_cosine), ("validation_images", args.accuracy_images)) if value is not None}
    if given:
        if args.int8_mode == "full":
            parser.error("the --accuracy-* options set the accuracy-aware target; they do not go with "
                         "--int8-mode full")
        try:
            target = AccuracyTarget(**given)
        except ValueError as exc:
            parser.error(str(exc))
        for name in formats:
            if name in EXPORTERS and "int8" in EXPORTERS[name].precisions:
                options.setdefault(name, {})["accuracy_target"] = target
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 some artifact failed, 2 bad request)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", stream=sys.stderr)
    # Keep third-party chatter out unless asked for.
    if not args.verbose:
        for name in ("onnxruntime", "onnxscript", "onnx_ir", "torch"):
            logging.getLogger(name).setLevel(logging.ERROR)

    labels = None
    if args.labels is not None:
        try:
            labels = [line.strip() for line in args.labels.read_text(encoding="utf-8").splitlines()
                      if line.strip()]
        except OSError as exc:
            parser.error(f"cannot read --labels {args.labels}: {exc}")
    options = _exporter_options(parser, args)
    try:
        report = convert(
            args.variants, args.formats, args.precisions, args.weights, args.out,
            calibration=args.calibration, calibration_count=args.calibration_count,
            allow_random=args.allow_random, force=args.force, num_classes=args.num_classes,
            labels=labels, image_size=args.image_size, image_sizes=args.image_sizes, seed=args.seed,
            verify_images=args.verify_images, eval_ann=args.eval_ann, eval_images=args.eval_images,
            eval_limit=args.eval_limit,
            int8_mode=args.int8_mode, input_kind=args.input_kind, exporter_options=options,
            progress=not args.quiet and sys.stderr.isatty(), executor=args.executor, ray_address=args.ray_address,
        )
    except ConvertError as exc:
        print(f"edgedet-convert: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgedet-convert: interrupted; no partial artifact was left behind", file=sys.stderr)
        return 130
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
