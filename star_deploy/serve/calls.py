"""Calls from the ingress to model replicas, retried on another replica when one dies."""

from __future__ import annotations

import asyncio
import logging
import time
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


UNUSABLE_WAIT_S = 12.0
"""How long a request keeps retrying while replicas answer that their pipeline is unusable: Serve stops
routing to such a replica after three failed health checks, 2 s apart, and until then it answers fastest."""


def retryable(exc: BaseException) -> bool:
    """A dead, full or restarting replica, or one whose pipeline is unusable: another replica may serve."""
    return isinstance(exc, RETRYABLE) or unusable(exc)


def unusable(exc: BaseException) -> bool:
    """The replica answered that its pipeline is unusable (it is about to be replaced)."""
    return isinstance(getattr(exc, "cause", None), PipelineUnusable)


def backoff(attempt: int) -> float:
    return min(0.5 * 2**attempt, 4.0)


class Retries:
    """Whether to try a call again: ``retries`` times after dead or full replicas (with back-off), and
    every 0.5 s for up to UNUSABLE_WAIT_S after replicas with an unusable pipeline."""

    def __init__(self, retries: int) -> None:
        self.retries = retries
        self.attempt = 0
        self.unusable_until: float | None = None

    async def again(self, exc: BaseException, what: str) -> bool:
        """Wait before the next try and return True, or return False when the budget is spent."""
        if unusable(exc):
            now = time.monotonic()
            self.unusable_until = self.unusable_until or now + UNUSABLE_WAIT_S
            log.debug("%s: replica unusable, trying another (%s)", what, cause(exc))
            await asyncio.sleep(0.5)
            return now < self.unusable_until
        if self.attempt >= self.retries:
            return False
        log.warning("%s: replica unavailable (attempt %d/%d): %s", what, self.attempt + 1, self.retries + 1, cause(exc))
        await asyncio.sleep(backoff(self.attempt))
        self.attempt += 1
        return True

    async def retry_or_raise(self, exc: Exception, what: str, failure: str) -> None:
        """Return when ``exc`` may be retried; else raise ModelError (the model failed) or ServiceUnavailable."""
        if not retryable(exc):
            raise ModelError(cause(exc)) from None
        if not await self.again(exc, what):
            raise ServiceUnavailable(f"{failure} ({cause(exc)}); retry later") from None


async def generate(handle: DeploymentHandle, job: Job, retries: int) -> dict[str, Any]:
    """The final image of ``job``; dead, full or unusable replicas are retried (see ``Retries``)."""
    policy = Retries(retries)
    while True:
        try:
            return await handle.generate.remote(job)
        except (RayTaskError, *RETRYABLE) as exc:
            await policy.retry_or_raise(exc, "request", "no model replica could take the request")


async def stream(handle: DeploymentHandle, job: Job, retries: int) -> AsyncGenerator[dict[str, Any], None]:
    """Previews then the final image; after a replica fails the job restarts elsewhere, skipping events already sent."""
    sent = 0
    policy = Retries(retries)
    while True:
        seen = 0
        try:
            async for event in handle.options(stream=True).stream.remote(job):
                seen += 1
                if seen > sent:
                    sent = seen
                    yield event
            return
        except (RayTaskError, *RETRYABLE) as exc:
            await policy.retry_or_raise(exc, "stream", "no model replica could finish the stream")
