"""Scale-out on a real local Ray cluster (tests/ray_cluster.py: ``ray start --head``, two worker CPUs,
loopback only): sharded evaluation gives exactly the local figures."""
from __future__ import annotations

import json
import shutil

import pytest

from edgedet.evaluate import evaluate_artifact, evaluate_directory
from ray_cluster import run_on_local_cluster

DRIVER = """
import json, sys
from edgedet.evaluate import evaluate_directory
models, ann, images = sys.argv[1:4] if len(sys.argv) > 3 else ({args})
print(json.dumps({{"evaluation": evaluate_directory(models, ann, images, executor="ray", shards=3)}}))
"""


@pytest.fixture(scope="module")
def eval_set(onnx_exports, tmp_path_factory):
    """lite0 at fp32/fp16/int8 and a 6-image synthetic COCO split."""
    from edgedet.data.synthetic import SyntheticConfig, generate_coco

    out, _ = onnx_exports
    root = tmp_path_factory.mktemp("ray")
    shutil.copytree(out / "lite0", root / "models" / "lite0", ignore=shutil.ignore_patterns(".*"))
    ann = generate_coco(root / "coco", num_images=6, config=SyntheticConfig(image_size=320, seed=7),
                        split_name="val", progress=False)
    return root / "models", ann, root / "coco" / "val"


@pytest.fixture(scope="module")
def on_cluster(eval_set) -> dict:
    models, ann, images = eval_set
    return run_on_local_cluster(DRIVER.format(args=", ".join(repr(str(p)) for p in (models, ann, images))))


def test_sharded_evaluation_on_ray_equals_the_local_run(eval_set, on_cluster):
    models, ann, images = eval_set
    local = evaluate_directory(models, ann, images, executor="local", shards=3)
    assert sorted(local) == [f"lite0/onnxruntime-{p}" for p in ("fp16", "fp32", "int8")]
    assert on_cluster["evaluation"] == json.loads(json.dumps(local))
    # ... and both are what the single-process evaluation of each artifact gives.
    for name, metrics in local.items():
        precision = name.rsplit("-", 1)[1]
        assert evaluate_artifact(models, ann, images, precision=precision, threads=1) == metrics, name


def test_a_failing_shard_is_reported_and_names_the_artifact(eval_set, tmp_path):
    models, ann, images = eval_set
    broken = tmp_path / "models"
    shutil.copytree(models / "lite0" / "onnxruntime-int8", broken / "lite0" / "onnxruntime-int8")
    model = broken / "lite0" / "onnxruntime-int8" / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])  # truncated after the manifest was written
    with pytest.raises(RuntimeError, match=r"lite0/onnxruntime-int8: 3 of 3 shards failed: .*sha256"):
        evaluate_directory(broken, ann, images, executor="local", shards=3)
