"""benchmarks/run.py on its smallest configuration: lite0, ONNX fp32 + int8 (fp16 asked for but not
provided, to see a ``missing`` row), 3 runs, one thread (on a busy machine two threads can be 10x
slower, see benchmarks/README.md), a tiny GEMM and a reduced fusion ablation, on a copy of the
session's ONNX exports (``--skip-export``: nothing is re-exported).

Checks the outputs' shape, never the timings: ``results.json`` against its JSON Schema
(``benchmarks.schema``; also with ``jsonschema`` where installed), the CSV columns, the plots.
"""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks`

from benchmarks import matrix, run  # noqa: E402
from benchmarks.plots import pareto_front  # noqa: E402
from benchmarks.schema import CSV_COLUMNS, RESULTS_SCHEMA, validate  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def models(onnx_exports, tmp_path, monkeypatch):
    """A private copy of lite0's fp32 and int8 ONNX artifacts; the edgedet cache points into tmp."""
    src, _ = onnx_exports
    dst = tmp_path / "models"
    for precision in ("fp32", "int8"):
        shutil.copytree(src / "lite0" / f"onnxruntime-{precision}", dst / "lite0" / f"onnxruntime-{precision}")
    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path / "cache"))  # no reference checkpoint, no writes to ~
    return dst


def small_args(models: Path, out: Path, *extra: str) -> list[str]:
    return ["--device", "cpu", "--variants", "lite0", "--backends", "onnx", "--precisions", "fp32,fp16,int8",
            "--runs", "3", "--warmup", "1", "--models", str(models), "--skip-export", "--out", str(out),
            "--gemm-sizes", "128", "--threads", "1", "--no-progress", *extra]


def test_smallest_benchmark(models, tmp_path, capsys):
    out = tmp_path / "out"
    status = run.main(small_args(models, out, "--ablation-variants", "lite0", "--ablation-runs", "2"))
    printed = capsys.readouterr().out
    assert status == 0, printed

    results = json.loads((out / "results.json").read_text())
    assert validate(results) == []
    jsonschema.validate(results, RESULTS_SCHEMA)

    assert results["schema_version"] == 3 and results["interrupted"] is False
    assert results["machine"]["threads"] == 1 and "onnxruntime" in results["machine"]["runtimes"]
    assert results["settings"]["backends"] == ["onnx"] and results["export"]["skipped"] is True
    rows = {(r["backend"], r["precision"]): r for r in results["rows"]}
    assert set(rows) == {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
                         ("onnxruntime", "int8")}
    assert rows[("onnxruntime", "fp16")]["status"] == "missing"
    for key in (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")):
        row = rows[key]
        assert row["status"] == "ok", row
        assert row["model_ms"]["runs"] == 3 and row["e2e_ms"]["p50"] > 0 and row["fps"] > 0
        # the stages timed inside the same end-to-end calls: per frame they add up to it exactly
        stages = row["stages_ms"]
        assert set(stages) == {"pre", "infer", "decode", "residual"}
        assert all(stages[k]["runs"] == 3 and stages[k]["min"] > 0 for k in ("pre", "infer", "decode"))
        assert sum(s["mean"] for s in stages.values()) == pytest.approx(row["e2e_ms"]["mean"], abs=1e-3)
        outside = (stages["pre"]["p50"] + stages["decode"]["p50"]) / row["e2e_ms"]["p50"]
        assert 0 < row["outside_share"] < 1 and row["outside_share"] == pytest.approx(outside, abs=1e-4)
        assert row["speedup_vs_torch"] > 0 and row["macs"] > 0 and row["weights"] == "random"
        assert row["map"] is None  # random weights: no mAP
    assert rows[("onnxruntime", "fp32")]["peak_share"] > 0
    assert rows[("onnxruntime", "int8")]["peak_share"] > 0  # of the INT8 peak
    assert rows[("onnxruntime", "fp16")]["peak_share"] is None  # a CPU has no FP16 peak of its own
    assert rows[("onnxruntime", "int8")]["parity"]["cls_cosine"] > 0.99  # copied from the manifest
    assert rows[("torch", "fp32")]["speedup_vs_torch"] == 1.0
    int8, fp32 = rows[("onnxruntime", "int8")], rows[("onnxruntime", "fp32")]
    assert int8["speedup_vs_fp32"] == pytest.approx(fp32["model_ms"]["p50"] / int8["model_ms"]["p50"], rel=1e-3)
    assert fp32["speedup_vs_fp32"] is None and rows[("torch", "fp32")]["speedup_vs_fp32"] is None

    # the issue's targets this run can check: lite0's best INT8 vs torch, its INT8 outside share,
    # INT8 vs FP32 on onnxruntime, and the largest share of a peak
    checks = {(c["target"], c["subject"]): c for c in results["checks"]}
    assert set(checks) == {("e2e_vs_torch", "lite0 (best: onnxruntime)"), ("outside_share", "lite0/onnxruntime-int8"),
                           ("int8_vs_fp32", "lite0/onnxruntime-int8"), ("peak_share", checks_peak_subject(results))}
    e2e = checks[("e2e_vs_torch", "lite0 (best: onnxruntime)")]
    assert e2e["limit"] == 8.0 and e2e["value"] == pytest.approx(
        rows[("torch", "fp32")]["e2e_ms"]["p50"] / int8["e2e_ms"]["p50"], rel=1e-3)
    assert e2e["met"] is (e2e["value"] >= 8.0)
    assert checks[("outside_share", "lite0/onnxruntime-int8")]["value"] == pytest.approx(int8["outside_share"], abs=1e-4)
    assert checks[("int8_vs_fp32", "lite0/onnxruntime-int8")]["value"] == pytest.approx(int8["speedup_vs_fp32"], abs=1e-3)
    # The reference row runs the artifacts' own (realistic random) weights, not another network.
    assert rows[("torch", "fp32")]["weights_source"] == rows[("onnxruntime", "fp32")]["weights_source"]

    found, ablation = results["context"]["limits"], results["context"]["fusion_ablation"]
    assert found["fp32"]["peak"] > 0 and found["int8"]["peak"] > 0 and found["memory"]["peak_gbps"] > 0
    assert {"openvino", "onnxruntime", "torch", "numpy"} <= set(found["fp32"]["by_kernel"])
    assert found["fp32"]["winner"] in found["fp32"]["by_kernel"] and found["sizes"] == [128]
    entry = ablation["variants"]["lite0"]
    assert entry["fast_vs_softmax_bifpn"] > 0 and set(entry["bifpn_ms"]) == {"fast_normalized", "softmax", "sum"}

    with (out / "results.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        lines = list(reader)
    assert len(lines) == 4 and {line["status"] for line in lines} == {"ok", "missing"}

    for name in ("latency.png", "parity_vs_latency.png", "stages.png", "peak_share.png", "fusion_ablation.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert name in results["plots"]
    assert "lite0" in printed and "onnxruntime" in printed and "FP32 peak" in printed and "INT8 peak" in printed
    assert "measured peaks, 1 thread: FP32 " in printed and "pre/infer/decode ms" in printed
    assert "Targets: " in printed and "e2e_vs_torch" in printed
    assert any(n.startswith("stage timing: the end-to-end time outside") for n in results["notes"])


def checks_peak_subject(results: dict) -> str:
    top = max((r for r in results["rows"] if r["peak_share"] is not None), key=lambda r: r["peak_share"])
    return f"max: {top['variant']}/{top['backend']}-{top['precision']}"


def test_stage_timer_times_the_stages_of_real_calls(onnx_exports):
    """StageTimer on a real artifact's pipeline: records only armed calls, one figure per stage,
    refuses a call that skips a stage, and leaves the pipeline and backend as they were."""
    from benchmarks.measure import StageTimer, bench_frames, load_detector
    from edgedet.detector import find_artifacts

    src, _ = onnx_exports
    artifact = next(a for a in find_artifacts(src) if a.name == "lite0/onnxruntime-int8")
    detector = load_detector(artifact, device="cpu", threads=1)
    pipeline, frame = detector.pipeline, bench_frames((640, 480), count=1)[0]
    batch, _ = pipeline.prepare([frame])
    timer = StageTimer(pipeline)
    with timer.installed():
        pipeline.backend.run(batch)  # not armed: passes through
        timer.start()
        found = detector(frame)
        seconds = timer.stop()
        assert len(seconds) == 3 and all(s > 0 for s in seconds)
        assert found.xyxy.shape[1] == 4
        timer.start()
        pipeline.backend.run(batch)  # only inference: the stages would not add up to an end-to-end call
        with pytest.raises(RuntimeError, match="did not run pre, decode"):
            timer.stop()
    assert not {"prepare", "decode"} & set(vars(pipeline)) and "run" not in vars(pipeline.backend)


def test_targets_are_checked_and_a_slow_int8_is_said_plainly():
    """The targets from a run's rows (figures made up, so each verdict is known), and the table's
    note on an INT8 row that misses its FP32 by the target."""
    from benchmarks.matrix import finalize
    from benchmarks.report import table_rows
    from benchmarks.results import Row
    from benchmarks.targets import check_targets

    def row(backend, precision, model, e2e, pre=1.0, decode=0.5, variant="lite0"):
        r = Row(variant=variant, family="lite" if variant.startswith("lite") else "d", phi=0, backend=backend,
                format=None, precision=precision, device="cpu")
        r.model_ms, r.e2e_ms = {"p50": model, "p90": model}, {"p50": e2e, "p90": e2e}
        r.stages_ms = {"pre": {"p50": pre}, "infer": {"p50": e2e - pre - decode}, "decode": {"p50": decode},
                       "residual": {"p50": 0.0}}
        r.outside_share = (pre + decode) / e2e
        return r

    rows = [row("torch", "fp32", 90.0, 100.0), row("onnxruntime", "fp32", 20.0, 24.0),
            row("onnxruntime", "int8", 16.0, 20.0, pre=2.0, decode=2.0), row("openvino", "fp32", 20.0, 24.0),
            row("openvino", "int8", 8.0, 11.0, pre=0.5, decode=0.5), row("torch", "fp32", 300.0, 310.0, variant="d0")]
    finalize(rows, None)
    got = {(c.target, c.subject): (c.met, c.value) for c in check_targets(rows)}
    assert got[("e2e_vs_torch", "lite0 (best: openvino)")] == (True, pytest.approx(100 / 11, abs=1e-3))
    assert got[("e2e_vs_torch", "d0")] == (None, None)  # d0 has no INT8 row in this run
    assert got[("outside_share", "lite0/onnxruntime-int8")] == (False, 0.2)
    assert got[("outside_share", "lite0/openvino-int8")] == (True, pytest.approx(1 / 11, abs=1e-4))
    assert got[("int8_vs_fp32", "lite0/onnxruntime-int8")] == (False, 1.25)
    assert got[("int8_vs_fp32", "lite0/openvino-int8")] == (True, 2.5)
    assert not any(target == "peak_share" for target, _ in got)  # no peaks measured
    notes = {(cells[0], cells[1], cells[2]): cells[-1] for cells in table_rows(rows)[1:]}
    assert notes[("lite0", "onnxruntime", "int8")].startswith("INT8 only 1.25x FP32, target 1.8x")
    assert "INT8" not in notes[("lite0", "openvino", "int8")]


def test_ctrl_c_keeps_measured_rows(models, tmp_path, monkeypatch):
    """Ctrl-C during the first artifact: the PyTorch row measured before it is written; exit 130."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(matrix, "time_detector", interrupted)
    out = tmp_path / "out"
    status = run.main(small_args(models, out, "--ablation-variants", "none", "--gemm-sizes", "none",
                                 "--no-plots", "--precisions", "fp32,int8", "--runs", "1", "--warmup", "0"))
    assert status == 130
    results = json.loads((out / "results.json").read_text())
    assert validate(results) == []
    assert results["interrupted"] is True
    assert [(r["backend"], r["status"]) for r in results["rows"]] == [("torch", "ok")]
    assert results["not_measured"] == ["lite0/onnxruntime-fp32", "lite0/onnxruntime-int8"]
    assert results["context"] == {"limits": None, "fusion_ablation": None}


def test_device_without_runtime_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path / "cache"))
    status = run.main(["--device", "gpu", "--backends", "onnx", "--variants", "lite0", "--skip-export",
                       "--models", str(tmp_path), "--out", str(tmp_path / "out")])
    assert status == 2
    assert "onnxruntime has no 'gpu' device" in capsys.readouterr().err


def test_bad_requests_exit_2(tmp_path, capsys):
    base = ["--skip-export", "--models", str(tmp_path), "--out", str(tmp_path / "out")]
    assert run.main(["--variants", "d99", *base]) == 2
    assert run.main(["--precisions", "fp8", *base]) == 2
    assert run.main(["--backends", "tensorflow", *base]) == 2
    assert run.main(["--coco-ann", str(tmp_path / "a.json"), *base]) == 2
    assert "error:" in capsys.readouterr().err


def test_validator_reports_violations():
    good = {"p50": 1.0, "p90": 2.0, "p99": 3.0, "mean": 1.5, "min": 0.5, "runs": 3}
    from benchmarks.schema import LATENCY

    assert validate(good, LATENCY) == []
    bad = {**good, "runs": 0, "p50": "fast", "extra": 1}
    del bad["min"]
    problems = validate(bad, LATENCY)
    assert any("runs" in p and "minimum" in p for p in problems)
    assert any("p50" in p and "expected number" in p for p in problems)
    assert any("missing required field 'min'" in p for p in problems)
    assert any("unexpected field 'extra'" in p for p in problems)
    assert validate({"schema_version": 1}, RESULTS_SCHEMA)  # an old version, missing fields


def test_pareto_front():
    points = [(10.0, 0.30), (5.0, 0.20), (20.0, 0.25), (7.0, 0.20), (30.0, 0.40)]
    assert pareto_front(points) == [(5.0, 0.20), (10.0, 0.30), (30.0, 0.40)]


def test_map_of_an_artifact_is_cached(onnx_exports, tmp_path):
    """mAP through edgedet.evaluate on a tiny synthetic COCO split; the second call is a cache hit."""
    from benchmarks.accuracy import EvalSet, MapCache, evaluate_detector, evaluation_available
    from benchmarks.measure import load_detector
    from edgedet.data.synthetic import SyntheticConfig, generate_coco
    from edgedet.detector import find_artifacts

    if evaluation_available():
        pytest.skip(evaluation_available())
    ann = generate_coco(tmp_path / "coco", num_images=2, config=SyntheticConfig(image_size=320), split_name="val",
                        progress=False)
    src, _ = onnx_exports
    artifact = next(a for a in find_artifacts(src) if a.name == "lite0/onnxruntime-fp32")
    detector = load_detector(artifact, device="cpu", threads=1)
    eval_set = EvalSet(Path(ann), tmp_path / "coco" / "val", "test", limit=None)
    cache_file = tmp_path / "map-cache.json"
    first = evaluate_detector(detector, eval_set, MapCache(cache_file), runtime="r", device="cpu")
    assert set(first) >= {"AP", "AP50", "source", "cached"} and first["cached"] is False
    again = evaluate_detector(detector, eval_set, MapCache(cache_file), runtime="r", device="cpu")
    assert again["cached"] is True and again["AP"] == first["AP"]


def test_reference_checkpoint_is_found_exported_and_scored(tmp_path, monkeypatch, capsys):
    """A trained-reference layout (<cache>/reference/lite0/best.pth with metadata and a val split):
    the benchmark exports it (one ONNX fp32 artifact, ~15 s) with its class count and names, and
    scores mAP on its val split."""
    from converters.weights import realistic_random_
    from edgedet.data.synthetic import CLASSES, SyntheticConfig, generate_coco
    from edgedet.model import create_model
    from edgedet.model.checkpoint import save_checkpoint

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEDET_CACHE", str(cache))
    ann = generate_coco(tmp_path / "data", num_images=2, config=SyntheticConfig(image_size=320), split_name="val",
                        progress=False)
    model = realistic_random_(create_model("lite0", num_classes=len(CLASSES)), seed=1, images=2)
    save_checkpoint(model, cache / "reference" / "lite0" / "best.pth", metadata={
        "variant": "lite0", "image_size": 320, "num_classes": len(CLASSES), "class_names": list(CLASSES),
        "category_ids": list(range(1, len(CLASSES) + 1)), "val_map": 0.0,
        "train_config": {"val_ann": str(ann), "val_images": str(tmp_path / "data" / "val")}})
    out = tmp_path / "out"
    status = run.main(["--variants", "lite0", "--backends", "onnx", "--precisions", "fp32", "--runs", "2",
                       "--warmup", "0", "--threads", "1", "--out", str(out), "--gemm-sizes", "none",
                       "--ablation-variants", "none", "--no-progress"])
    assert status == 0, capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert validate(results) == []
    assert results["settings"]["weights"]["lite0"]["kind"] == "reference"
    assert results["export"]["built"] == 1
    for row in results["rows"]:
        assert row["status"] == "ok" and row["weights"] == "reference" and row["num_classes"] == len(CLASSES)
        assert row["map"]["source"] == "reference val split" and 0.0 <= row["map"]["AP"] <= 1.0
    assert "accuracy_vs_latency.png" in results["plots"]


def test_resize_study_smallest(models, tmp_path, capsys):
    """benchmarks/resize.py on one frame size and lite0 (320): every method timed, its parity with
    the runtime's INTER_AREA path from the real ONNX artifact, and mAP of a (random-weight)
    checkpoint through PyTorch on a 2-image synthetic split rendered at the frame size."""
    from benchmarks import resize
    from converters.weights import realistic_random_
    from edgedet.data.synthetic import CLASSES
    from edgedet.model import create_model
    from edgedet.model.checkpoint import save_checkpoint

    model = realistic_random_(create_model("lite0", num_classes=len(CLASSES)), seed=1, images=2)
    ckpt = tmp_path / "lite0.pth"
    save_checkpoint(model, ckpt, metadata={"variant": "lite0", "image_size": 320, "num_classes": len(CLASSES),
                                           "class_names": list(CLASSES),
                                           "category_ids": list(range(1, len(CLASSES) + 1))})
    out = tmp_path / "resize"
    base = ["--frame-sizes", "1280x720", "--variants", "lite0", "--runs", "3", "--scenes", "2",
            "--models", str(models), "--threads", "1", "--out", str(out)]
    assert resize.main([*base, "--map-images", "0"]) == 0
    results = json.loads((out / "resize.json").read_text())
    (case,) = results["cases"]
    assert case["frame_size"] == [1280, 720] and case["input_size"] == 320 and case["map"] is None
    assert case["model"].startswith("onnxruntime-fp32 artifact (random weights)")
    assert list(case["time"]) == list(resize.METHODS) and all(t["p50_ms"] > 0 for t in case["time"].values())
    parity = case["parity"]
    assert parity["area"]["detection_ap50"] == 1.0 and parity["area"]["pixel_mean_abs"] == 0.0
    assert parity["nearest"]["pixel_mean_abs"] > parity["linear"]["pixel_mean_abs"] > 0
    assert all(0 <= parity[m]["detection_ap50"] <= 1 and parity[m]["cls_cosine"] > 0.9 for m in resize.METHODS)
    assert case["recommendation"]["method"] in resize.METHODS
    assert case["recommendation"]["checked_on"] == ["parity"]

    # the trained-checkpoint path: PyTorch with the checkpoint's weights, and mAP per method
    out2 = tmp_path / "resize2"
    assert resize.main([*base[:-1], str(out2), "--weights", str(ckpt), "--methods", "area,nearest",
                        "--map-images", "2"]) == 0
    (case,) = json.loads((out2 / "resize.json").read_text())["cases"]
    assert case["model"].startswith("torch fp32") and set(case["map"]) == {"area", "nearest"}
    assert all(0.0 <= m["AP"] <= 1.0 for m in case["map"].values())
    assert case["recommendation"]["checked_on"] == ["parity", "map"]
    assert "-> fastest that keeps accuracy" in capsys.readouterr().out


def test_resize_study_bad_requests(tmp_path, capsys):
    from benchmarks import resize

    assert resize.main(["--methods", "linear,area", "--out", str(tmp_path)]) == 2
    assert resize.main(["--methods", "area,bicubic", "--out", str(tmp_path)]) == 2
    assert resize.main(["--frame-sizes", "1280by720", "--out", str(tmp_path)]) == 2
    assert resize.main(["--weights", str(tmp_path / "missing.pth"), "--out", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
