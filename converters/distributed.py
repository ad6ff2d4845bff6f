"""The conversion matrix on a Ray cluster (``edgedet-convert --executor ray``).

Per variant, the driver builds the PyTorch model and the PyTorch FP32 reference outputs once, as a
local run does. Then every FP32 graph that several artifacts start from (the ONNX graph, which the
ONNX and OpenVINO exporters share; the TFLite flatbuffer) is built once, as one Ray task, and each
artifact is one Ray task that depends on it: export, quantize, measure parity. A task returns the
artifact's files as bytes; the driver alone writes them, with the pipeline's own staging, manifest,
hashing and atomic publishing — so a cluster needs no shared file system, and what lands is what a
local run would publish. A task that fails is reported like a failed local build and the others go on.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converters import calibration as calib

if TYPE_CHECKING:
    from converters.base import Exporter
    from converters.pipeline import ArtifactResult, _Job, _Plan
    from converters.verify import Reference

__all__ = ["build_on_ray"]

logger = logging.getLogger(__name__)


def fp32_task(exporter: Exporter, model: Any) -> bytes:
    """One shared FP32 graph (a Ray task)."""
    return exporter.fp32_graph(model, model.config)


def artifact_task(exporter: Exporter, precision: str, model: Any, reference: Reference,
                  calibration: calib.Calibration | None, thresholds: Any, graph: bytes | None) -> tuple:
    """Export and verify one artifact in a scratch directory (a Ray task): its files as bytes and
    what the driver needs to publish it."""
    from converters.pipeline import _make

    if graph is not None:
        exporter.seed_fp32(model, model.config, graph)
    try:
        with tempfile.TemporaryDirectory(prefix="edgedet-build-") as scratch:
            staging = Path(scratch)
            made = _make(exporter, precision, model, reference, calibration, staging, thresholds)
            files = {f.resolve().relative_to(staging.resolve()).as_posix(): f.read_bytes() for f in made.files}
            return files, made.io, made.parity, made.failures, made.export_seconds
    finally:
        exporter.release()


def build_on_ray(todo: list[_Job], model: Any, reference: Reference, plan: _Plan, thresholds: Any,
                 address: str | None, bar: Any) -> list[ArtifactResult]:
    """Build ``todo`` (one variant's jobs) as Ray tasks and publish each result here, in job order."""
    from converters.pipeline import _failed, _Made, _publish_made, _staging, _thresholds
    from edgedet.cluster import connect

    ray = connect(address)
    started = time.perf_counter()
    shared = ray.put(model)  # one copy in the object store for every task of this variant
    frozen = calib.freeze(plan.calibration) if plan.calibration is not None and any(j.calibrated for j in todo) else None
    graphs: dict[str, Any] = {}
    for job in todo:
        kind = job.exporter.fp32_kind
        if kind is not None and kind not in graphs:
            graphs[kind] = ray.remote(num_cpus=1, max_retries=0)(fp32_task).remote(job.exporter, shared)
    build = ray.remote(num_cpus=1, max_retries=0)(artifact_task)
    refs = {build.remote(job.exporter, job.precision, shared, reference, frozen if job.calibrated else None,
                         _thresholds(thresholds, plan.weights[job.variant]),
                         graphs.get(job.exporter.fp32_kind)): job for job in todo}
    results: dict[str, ArtifactResult] = {}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        job = refs[done[0]]
        bar.set_description(job.name)
        try:
            files, io, parity, failures, export_seconds = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - a failed task is a failed build; the others go on
            cause = getattr(exc, "cause", None) or exc
            logger.error("%s: failed on the cluster: %s: %s", job.name, type(cause).__name__, cause)
            results[job.name] = _failed(job, f"{type(cause).__name__}: {cause}", time.perf_counter() - started)
            bar.update(1)
            continue
        staging = _staging(job)
        try:
            paths = []
            for name, content in files.items():
                path = staging / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                paths.append(path)
            made = _Made(paths, io, parity, failures, export_seconds)
            results[job.name] = _publish_made(job, made, staging, plan, model.config, started)
        except Exception as exc:  # noqa: BLE001
            logger.error("%s: publishing failed: %s: %s", job.name, type(exc).__name__, exc)
            results[job.name] = _failed(job, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        bar.update(1)
    return [results[job.name] for job in todo]
