"""Server-sent event responses whose client may leave at any time."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from ray.exceptions import TaskCancelledError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

CLIENT_GONE = (TaskCancelledError, ClientDisconnect)
"""What a stream's ASGI call raises when its client disconnected: Ray Serve cancels the request's receive task."""


class EventStream(StreamingResponse):
    """``text/event-stream`` that ends quietly when the client disconnects (an ordinary event, not an error)."""

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except CLIENT_GONE:
            return
