"""Scale-out on a real local Ray cluster (tests/ray_cluster.py: ``ray start --head``, two worker CPUs,
loopback only): the conversion matrix and sharded evaluation give what local runs give."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from converters import convert
from edgedet.evaluate import evaluate_artifact, evaluate_directory
from edgedet.manifest import Manifest
from ray_cluster import run_on_local_cluster

#: lite0 across the three formats; random weights (full INT8), synthetic calibration.
CONVERT = dict(variants="lite0", formats="onnx,openvino,tflite", precisions="fp32,int8", weights="random",
               allow_random=True, calibration="synthetic", calibration_count=8)
#: Thresholds no INT8 artifact meets: its task "fails" parity, as a bad export would.
IMPOSSIBLE = {"fp32": {}, "fp16": {}, "int8": {"cls_cosine": ("min", 1.01)}}

DRIVER = """
import json, sys
from converters import convert
from edgedet.evaluate import evaluate_directory

paths = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {paths}
options = {options}
built = convert(out_dir=paths["ray_out"], executor="ray", **options)
failing = convert(out_dir=paths["fail_out"], executor="ray", thresholds={impossible},
                  **{{**options, "formats": "onnx"}})
evaluation = evaluate_directory(paths["models"], paths["ann"], paths["images"], executor="ray", shards=3)
print(json.dumps({{"built": [[r.name, r.status] for r in built.results],
                   "failing": [[r.name, r.status, str(r.path)] for r in failing.results],
                   "evaluation": evaluation}}))
"""


@pytest.fixture(scope="module")
def work(onnx_exports, tmp_path_factory):
    """lite0 ONNX artifacts at fp32/fp16/int8 and a 6-image synthetic COCO split (for evaluation),
    and output folders for the conversions."""
    from edgedet.data.synthetic import SyntheticConfig, generate_coco

    out, _ = onnx_exports
    root = tmp_path_factory.mktemp("ray")
    shutil.copytree(out / "lite0", root / "models" / "lite0", ignore=shutil.ignore_patterns(".*"))
    ann = generate_coco(root / "coco", num_images=6, config=SyntheticConfig(image_size=320, seed=7),
                        split_name="val", progress=False)
    return {"models": str(root / "models"), "ann": str(ann), "images": str(root / "coco" / "val"),
            "local_out": str(root / "local"), "ray_out": str(root / "ray"), "fail_out": str(root / "fail")}


@pytest.fixture(scope="module")
def on_cluster(work) -> dict:
    return run_on_local_cluster(DRIVER.format(paths=repr(work), options=repr(CONVERT), impossible=repr(IMPOSSIBLE)))


def _manifests(root: str) -> dict[str, Manifest]:
    from edgedet.detector import find_artifacts

    return {a.name: a.manifest for a in find_artifacts(root)}


def _digest(root: str, name: str, file: str) -> str:
    """The sha256 of a published file; in OpenVINO IR, auto-generated layer names (``Constant_614607``)
    carry a per-process counter, so their numbers are blanked (the weights file must match exactly)."""
    data = Path(root, *name.split("/"), file).read_bytes()
    if file.endswith(".xml"):
        data = re.sub(rb'name="([A-Za-z]+)_\d+"', rb'name="\1_N"', data)
    return hashlib.sha256(data).hexdigest()


def _convert_locally(out: str) -> None:
    """The local run, as a user runs it: a fresh process (this one's torch settings have been changed
    by other tests, and the realistic random weights depend on torch's thread count)."""
    code = f"from converters import convert\nr = convert(out_dir={out!r}, **{CONVERT!r})\nassert r.ok, r.table()\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]


def test_conversion_on_ray_lands_what_a_local_run_lands(work, on_cluster):
    _convert_locally(work["local_out"])
    here, there = _manifests(work["local_out"]), _manifests(work["ray_out"])
    assert sorted(on_cluster["built"]) == sorted([name, "built"] for name in here)
    assert sorted(here) == sorted(there) and len(here) == 6
    for name, mine in here.items():
        theirs = there[name]
        assert theirs.export_key == mine.export_key, name
        assert sorted(theirs.files) == sorted(mine.files), name
        for file in mine.files:  # the same files came back and were published
            assert _digest(work["ray_out"], name, file) == _digest(work["local_out"], name, file), (name, file)
        same = {f: getattr(mine, f) for f in ("input", "outputs", "anchors", "labels", "float_layers", "options",
                                             "calibration", "weights", "tools")}
        assert {f: getattr(theirs, f) for f in same} == same, name
        assert theirs.parity.keys() == mine.parity.keys(), name
        for figure, value in mine.parity.items():
            if isinstance(value, float):
                assert theirs.parity[figure] == pytest.approx(value, rel=1e-5, abs=1e-7), (name, figure)
            else:
                assert theirs.parity[figure] == value, (name, figure)


def test_a_failing_task_leaves_a_failed_entry_and_the_rest_land(work, on_cluster):
    statuses = {name: (status, path) for name, status, path in on_cluster["failing"]}
    assert statuses["lite0/onnxruntime-fp32"][0] == "built"
    status, path = statuses["lite0/onnxruntime-int8"]
    assert status == "failed" and path.endswith("onnxruntime-int8.failed")
    assert sorted(_manifests(work["fail_out"])) == ["lite0/onnxruntime-fp32"]  # a *.failed dir is never served
    failed = Manifest.load(f"{work['fail_out']}/lite0/onnxruntime-int8.failed")
    assert failed.parity["passed"] is False and "cls_cosine" in failed.parity["failed_checks"]


def test_sharded_evaluation_on_ray_equals_the_local_run(work, on_cluster):
    local = evaluate_directory(work["models"], work["ann"], work["images"], executor="local", shards=3)
    assert sorted(local) == [f"lite0/onnxruntime-{p}" for p in ("fp16", "fp32", "int8")]
    assert on_cluster["evaluation"] == json.loads(json.dumps(local))
    # ... and both are what the single-process evaluation of each artifact gives.
    for name, metrics in local.items():
        precision = name.rsplit("-", 1)[1]
        assert evaluate_artifact(work["models"], work["ann"], work["images"], precision=precision, threads=1) == metrics


def test_a_failing_shard_is_reported_and_names_the_artifact(work, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(f"{work['models']}/lite0/onnxruntime-int8", broken / "lite0" / "onnxruntime-int8")
    model = broken / "lite0" / "onnxruntime-int8" / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])  # truncated after the manifest was written
    with pytest.raises(RuntimeError, match=r"lite0/onnxruntime-int8: 3 of 3 shards failed: .*sha256"):
        evaluate_directory(broken, work["ann"], work["images"], executor="local", shards=3)


def test_an_unknown_executor_or_unreachable_cluster_is_a_clear_error(tmp_path):
    from converters import ConvertError

    with pytest.raises(ConvertError, match="unknown executor 'dask'"):
        convert(out_dir=tmp_path, executor="dask", **CONVERT)
    with pytest.raises(ConvertError, match="cannot reach a Ray cluster at 127.0.0.1:1"):
        convert(out_dir=tmp_path, executor="ray", ray_address="127.0.0.1:1", **CONVERT)
