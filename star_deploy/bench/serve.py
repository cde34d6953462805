"""bench-serve: server requests/s and latency at several client counts vs the bare pipeline's batched throughput."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..runtime.plan import LoadOptions
from ..serve.client import request
from ..serve.model import ImageModel, Job

log = logging.getLogger("star_deploy.serve")

PROMPTS = (
    "a red circle on a blue background",
    "a green square on a white background",
    "a yellow triangle on a black background",
)


def job(i: int) -> dict:
    """The i-th benchmark request body (prompts and seeds vary, settings are the defaults)."""
    return {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i}


@dataclass(frozen=True)
class LoadResult:
    """Server figures at one client count."""

    clients: int
    requests: int
    errors: int
    seconds: float
    p50_s: float
    p99_s: float
    mean_batch: float

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.seconds


def pipeline_throughput(spec: LoadOptions, batch_size: int, repeats: int) -> float:
    """Images per second of the bare pipeline generating batches of ``batch_size`` (after one warm-up batch)."""
    model = _shared_model(spec)
    jobs = [Job(**job(i)) for i in range(batch_size)]
    model.generate(jobs)
    start = time.perf_counter()
    for _ in range(repeats):
        model.generate(jobs)
    return batch_size * repeats / (time.perf_counter() - start)


_MODELS: dict[LoadOptions, ImageModel] = {}


def _shared_model(spec: LoadOptions) -> ImageModel:
    if spec not in _MODELS:
        _MODELS[spec] = ImageModel(spec)
    return _MODELS[spec]


def server_load(url: str, clients: int, requests_per_client: int, timeout_s: float = 300.0) -> LoadResult:
    """``clients`` threads each sending ``requests_per_client`` requests back to back."""

    def client(c: int) -> list[tuple[float, int, int]]:
        out = []
        for r in range(requests_per_client):
            t0 = time.perf_counter()
            reply = request(f"{url}/v1/images", job(c * requests_per_client + r), timeout_s=timeout_s)
            out.append((time.perf_counter() - t0, reply.status, int(reply.headers.get("x-batch-size", 0))))
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        rows = [row for rows in pool.map(client, range(clients)) for row in rows]
    seconds = time.perf_counter() - start
    latencies = np.array([r[0] for r in rows if r[1] == 200] or [float("nan")])
    batches = [r[2] for r in rows if r[1] == 200]
    return LoadResult(
        clients=clients,
        requests=len(rows),
        errors=sum(r[1] != 200 for r in rows),
        seconds=seconds,
        p50_s=float(np.percentile(latencies, 50)),
        p99_s=float(np.percentile(latencies, 99)),
        mean_batch=float(np.mean(batches)) if batches else 0.0,
    )


def compare_level(
    url: str, spec: LoadOptions, clients: int, requests_per_client: int, max_batch: int, replicas: int, repeats: int
) -> dict:
    """Server figures at ``clients`` and the pipeline's img/s at the same batch size, timed just before and after.

    The machine may be shared: the higher of the two pipeline readings is kept, so efficiency errs low.
    """
    batch = min(clients, max_batch)
    before = pipeline_throughput(spec, batch, repeats)
    result = server_load(url, clients, requests_per_client)
    after = pipeline_throughput(spec, batch, repeats)
    reference = max(before, after) * min(replicas, -(-clients // batch))
    return {
        **result.__dict__,
        "rps": result.rps,
        "batch_size": batch,
        "pipeline_img_s": reference,
        "pipeline_readings": [before, after],
        "efficiency": result.rps / reference,
    }
