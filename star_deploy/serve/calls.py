"""Calls from the ingress to model replicas, retried on another replica when one dies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from .errors import ServiceUnavailable
from .model import Job, PipelineUnusable

log = logging.getLogger("star_deploy.serve")

RETRYABLE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError, BackPressureError)
"""A replica died, restarts or is full: the same request may go to another replica."""


class ModelError(Exception):
    """The pipeline itself failed on a request (reported as 500, not retried)."""


def cause(exc: BaseException, limit: int = 160) -> str:
    """The first line of the user-side error inside a Ray task error."""
    inner = getattr(exc, "cause", None) or exc
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[-1][:limit] if text else ''}"


def retryable(exc: BaseException) -> bool:
    """A dead, full or restarting replica, or one whose pipeline is unusable: another replica may serve."""
    return isinstance(exc, RETRYABLE) or isinstance(getattr(exc, "cause", None), PipelineUnusable)


def backoff(attempt: int) -> float:
    return min(0.5 * 2**attempt, 4.0)


async def generate(handle: DeploymentHandle, job: Job, retries: int) -> dict[str, Any]:
    """The final image of ``job``; a dead or full replica is retried up to ``retries`` times."""
    for attempt in range(retries + 1):
        try:
            return await handle.generate.remote(job)
        except (RayTaskError, *RETRYABLE) as exc:
            if not retryable(exc):
                raise ModelError(cause(exc)) from None
            log.warning("replica unavailable (attempt %d/%d): %s", attempt + 1, retries + 1, cause(exc))
            failure = exc
        await asyncio.sleep(backoff(attempt))
    raise ServiceUnavailable(f"no model replica could take the request ({cause(failure)}); retry later")


async def stream(handle: DeploymentHandle, job: Job, retries: int) -> AsyncGenerator[dict[str, Any], None]:
    """Previews then the final image; after a replica dies the job restarts elsewhere, skipping events already sent."""
    sent = 0
    for attempt in range(retries + 1):
        seen = 0
        try:
            async for event in handle.options(stream=True).stream.remote(job):
                seen += 1
                if seen > sent:
                    sent = seen
                    yield event
            return
        except (RayTaskError, *RETRYABLE) as exc:
            if not retryable(exc):
                raise ModelError(cause(exc)) from None
            log.warning("replica unavailable mid-stream (attempt %d/%d): %s", attempt + 1, retries + 1, cause(exc))
            failure = exc
        await asyncio.sleep(backoff(attempt))
    raise ServiceUnavailable(f"no model replica could finish the stream ({cause(failure)}); retry later")
