"""The model deployment: each replica holds one pipeline and batches requests with ``@serve.batch``."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator
from typing import Any

from ray import serve

from .model import ImageModel, Job
from .options import ServeOptions

log = logging.getLogger("star_deploy.serve")

Result = dict[str, Any]
"""{"pixels": (H, W, 3) uint8, "batch_size": int, "cfg", "top_k", "top_p", "fast": as applied, "backend"} of one job."""

Event = dict[str, Any] | None
"""{"scale", "num_scales", "pixels"} for a preview, {"final": True, "pixels", ...} at the end; None: nothing."""

_DONE = object()


class UnreadStreamEnds(logging.Filter):
    """Drops asyncio's report of a stream's final StopAsyncIteration that no one read.

    ``@serve.batch`` ends each caller's stream by setting StopAsyncIteration on a future; when the caller
    left early (an ordinary client disconnect) nobody reads it, and asyncio would log it as an error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc_type = record.exc_info[0] if record.exc_info else None
        return not (exc_type is StopAsyncIteration and "never retrieved" in record.getMessage())


def drop_unread_stream_ends() -> None:
    """Install ``UnreadStreamEnds`` on asyncio's logger of this process, once."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, UnreadStreamEnds) for f in logger.filters):
        logger.addFilter(UnreadStreamEnds())


@serve.deployment(name="StarReplica")
class StarReplica:
    """One STAR pipeline per replica; plain and preview requests are batched in separate queues."""

    def __init__(self, options: ServeOptions) -> None:
        drop_unread_stream_ends()  # Ray ships this class by value: its process may never import this module
        self.model = ImageModel(options.model_spec())
        for handler in (self.generate_batch, self.stream_batch):
            handler.set_max_batch_size(options.max_batch_size)
            handler.set_batch_wait_timeout_s(options.batch_wait_s)
        log.info("replica %d ready: %s", os.getpid(), self.model.info()["backend"])

    def info(self) -> dict[str, Any]:
        """Config, backend and precision of the pipeline."""
        return self.model.info()

    async def check_health(self) -> None:
        """Ray Serve's health check: raises (and Ray replaces this replica) when the pipeline is unusable.

        Runs in a worker thread: after a failed generation the check runs a probe generation.
        """
        await asyncio.to_thread(self.model.check_usable)

    def release(self) -> int:
        """Free the pipeline (the next health check fails and Ray Serve replaces this replica); return the pid."""
        self.model.close()
        return os.getpid()

    def pid(self) -> int:
        """This replica's process id (the fault tests kill it)."""
        return os.getpid()

    def _result(self, job: Job, pixels: Any, batch_size: int) -> Result:
        cfg, top_k, top_p, mode = self.model.settings(job)
        return {
            "pixels": pixels,
            "batch_size": batch_size,
            "cfg": cfg,
            "top_k": top_k,
            "top_p": top_p,
            "fast": mode.label(),
            "backend": self.model.backend,
        }

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.1)
    async def generate_batch(self, jobs: list[Job]) -> list[Result]:
        """Final images of a batch of jobs, generated off the event loop."""
        images = await asyncio.to_thread(self.model.generate, jobs)
        return [self._result(job, image, len(jobs)) for job, image in zip(jobs, images)]

    async def generate(self, job: Job) -> Result:
        """The final image of one job (joins the current batch)."""
        return await self.generate_batch(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.1)
    async def stream_batch(self, jobs: list[Job]) -> AsyncGenerator[list[Event], None]:
        """Per scale, the coarse image of every job in the batch; then the final images."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_preview(scale: int, num_scales: int, images: dict[int, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (scale, num_scales, images))

        task = asyncio.ensure_future(asyncio.to_thread(self.model.generate, jobs, on_preview))
        task.add_done_callback(lambda _: queue.put_nowait(_DONE))
        while (item := await queue.get()) is not _DONE:
            scale, num_scales, images = item
            yield [
                {"scale": scale, "num_scales": num_scales, "pixels": images[i]} if i in images else None
                for i in range(len(jobs))
            ]
        images = task.result()
        yield [{"final": True, **self._result(job, image, len(jobs))} for job, image in zip(jobs, images)]

    async def stream(self, job: Job) -> AsyncGenerator[dict[str, Any], None]:
        """Previews then the final image of one job (joins the current preview batch)."""
        async for event in self.stream_batch(job):
            if event is not None:
                yield event
