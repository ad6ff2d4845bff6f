"""Work spread over a Ray cluster: connect once, run a function over many inputs as Ray tasks, and
collect every result or every failure — one home for this mechanism, used by the converters' Ray
executor and by sharded evaluation.

Nothing here assumes a shared file system: inputs travel with the task (bytes in the object store)
and results come back to the driver, which alone writes files. Ray is an optional extra
(``pip install 'edgedet[ray]'``); it is imported only when a Ray executor is asked for.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from edgedet._progress import progress_bar

__all__ = ["EXECUTORS", "ExecutorError", "TaskOutcome", "check_executor", "connect", "run_tasks"]

log = logging.getLogger(__name__)

#: Where work can run: in this process, or as tasks of a Ray cluster.
EXECUTORS = ("local", "ray")
T = TypeVar("T")


class ExecutorError(RuntimeError):
    """The executor cannot be used: Ray is missing, or the cluster cannot be reached."""


@dataclass
class TaskOutcome(Generic[T]):
    """One task's result, or the error it raised (a failed task does not stop the others)."""

    value: T | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def check_executor(executor: str) -> None:
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")


def connect(address: str | None = None) -> Any:
    """The ``ray`` module, connected to the cluster at ``address`` (``"auto"``/None: ``$RAY_ADDRESS``
    or a running local cluster). Connecting twice reuses the first connection."""
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError("the Ray executor needs Ray: pip install 'edgedet[ray]' (or use the local "
                            "executor, the default)") from exc
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            ray.init(address=address or "auto", logging_level=logging.WARNING, log_to_driver=False,
                     include_dashboard=False)
        except (ConnectionError, RuntimeError) as exc:
            raise ExecutorError(f"cannot reach a Ray cluster at {address or 'auto'} ({exc}); start one with "
                                "'ray start --head' or pass its address (--ray-address HOST:PORT)") from exc
        resources = ray.cluster_resources()
        log.info("connected to Ray %s at %s: %s CPUs on %d node(s)", ray.__version__, address or "auto",
                 resources.get("CPU", 0), len([n for n in ray.nodes() if n.get("Alive")]))
    return ray


def _check_reachable(address: str | None) -> None:
    """Fail in seconds when a ``HOST:PORT`` cluster address does not answer (Ray itself retries for
    minutes before giving up)."""
    import socket

    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise ExecutorError(f"cannot reach a Ray cluster at {address} ({exc}); start one with 'ray start "
                            "--head' or pass its address (--ray-address HOST:PORT)") from exc


def run_tasks(fn: Callable[..., T], inputs: Sequence[tuple], *, executor: str = "local",
              address: str | None = None, num_cpus: float = 1, desc: str = "tasks",
              progress: bool = False) -> list[TaskOutcome[T]]:
    """``fn(*args)`` for every ``args`` of ``inputs``, in this process or as Ray tasks; outcomes in
    input order. ``fn`` must be importable by the workers (a module-level function)."""
    check_executor(executor)
    bar = progress_bar(len(inputs), desc, unit="task", enabled=progress, leave=False)
    outcomes: list[TaskOutcome[T]] = []
    try:
        if executor == "local":
            for args in inputs:
                outcomes.append(_call(fn, args))
                bar.update(1)
            return outcomes
        ray = connect(address)
        remote = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)
        refs = [remote.remote(*args) for args in inputs]
        pending = {ref: i for i, ref in enumerate(refs)}
        results: dict[int, TaskOutcome[T]] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            try:
                results[index] = TaskOutcome(value=ray.get(done[0]))
            except Exception as exc:  # noqa: BLE001 - a task's failure is reported, the others go on
                results[index] = TaskOutcome(error=_describe(exc))
                log.warning("%s: task %d failed: %s", desc, index, results[index].error)
            bar.update(1)
        return [results[i] for i in range(len(refs))]
    finally:
        bar.close()


def _call(fn: Callable[..., T], args: tuple) -> TaskOutcome[T]:
    try:
        return TaskOutcome(value=fn(*args))
    except Exception as exc:  # noqa: BLE001 - same contract as a Ray task
        return TaskOutcome(error=_describe(exc))


def _describe(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the task's own exception
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:500]
