"""The job on a Ray cluster through Ray Data: the chunks as a dataset, ``map_batches`` over an actor pool.

Each actor (``--workers`` of them, ``--cpus-per-worker`` / ``--gpus-per-worker`` each) loads the
pipeline once and generates one chunk per call, writing its PNGs straight into the output folder,
which every node must see. Ray Data restarts an actor whose process dies and retries the chunk it
held (``max_restarts`` and ``max_task_retries`` are -1 for actor pools); images the dead attempt
had finished are found by their key and kept, so none is lost or written twice. This process
writes the index as chunks come back, with the node each was made on.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data

from ..errors import StarDeployError
from ..files.signals import stop_requests
from ..runtime.plan import LoadOptions, LoadPlan
from .local import RowsSink
from .model import load_pipeline, worker_options, worker_plan
from .options import BatchOptions
from .plan import Chunk
from .writer import ChunkRunner

log = logging.getLogger("star_deploy")
QUIET_LOGGERS = ("ray", "ray.data", "ray._private.authentication")


class RayJobError(StarDeployError):
    """The Ray job could not run (the cluster refused it, or its workers could not load the model)."""


class ChunkWorker:
    """A Ray Data actor: loads the pipeline once, then generates the chunks it is given."""

    def __init__(self, load: LoadOptions, cpus: int, out: str, sampler: str, batch_size: int) -> None:
        node = ray.get_runtime_context().get_node_id()
        self.runner = ChunkRunner(load_pipeline(worker_plan(load, cpus), batch_size), Path(out), sampler, node)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [json.dumps(self.runner(Chunk.from_json(str(text)))) for text in batch["chunk"]]
        return {"rows": np.array(rows, dtype=object)}


def verbose() -> bool:
    return log.getEffectiveLevel() <= logging.DEBUG


def connect(address: str) -> None:
    """Join the cluster as its driver; Ray's own chatter (and workers' logs) only with ``-v``."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose() else logging.WARNING)
    try:
        ray.init(address=address, log_to_driver=verbose(), logging_level=logging.INFO if verbose() else logging.WARNING)
    except ConnectionError as exc:
        raise RayJobError(f"--ray {address}: cannot join the cluster ({str(exc).splitlines()[0]})") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.INFO if verbose() else logging.ERROR)


def last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


def run_on_ray(job: BatchOptions, plan: LoadPlan, chunks: list[Chunk], on_rows: RowsSink) -> str | None:
    """Run ``chunks`` on the cluster; a first Ctrl-C or SIGTERM stops taking results (its name returned).

    Ray prints the cluster's error notices (a worker died, a task is retried) on stdout: they go to stderr here.
    """
    assert job.ray is not None
    with redirect_stdout(sys.stderr):
        connect(job.ray.address)
        try:
            with stop_requests() as stop:
                for rows in results(dataset(job, plan, chunks)):
                    on_rows(rows)
                    if stop.requested:
                        break
                return stop.name
        finally:
            ray.shutdown()


def dataset(job: BatchOptions, plan: LoadPlan, chunks: list[Chunk]) -> ray.data.Dataset:
    """The chunks as a dataset, mapped one chunk per call by an actor pool of ``--workers`` pipelines.

    ONNX Runtime threads default to the worker's CPUs (not every core of its node).
    """
    assert job.ray is not None
    items = ray.data.from_items([{"chunk": c.to_json()} for c in chunks], override_num_blocks=len(chunks))
    return items.map_batches(
        ChunkWorker,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=job.ray.workers),
        num_cpus=job.ray.cpus_per_worker,
        num_gpus=job.ray.gpus_per_worker or None,
        fn_constructor_kwargs={
            "load": worker_options(plan),
            "cpus": int(job.ray.cpus_per_worker),
            "out": str(job.out.resolve()),
            "sampler": job.call.sampler,
            "batch_size": job.batch_size,
        },
    )


def results(mapped: ray.data.Dataset) -> Iterator[list[dict[str, Any]]]:
    """The index lines of each finished chunk, as they come; a failed job as one RayJobError."""
    try:
        for row in mapped.iter_rows():
            yield json.loads(row["rows"])
    except (ray.exceptions.RayError, RuntimeError, ValueError) as exc:
        raise RayJobError(f"the Ray job failed: {last_line(exc)}; rerun with -v for Ray's log") from None
