"""A small blocking HTTP client for the server (stdlib only): used by bench-serve and the tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """Status, headers (lower-case names) and body of one HTTP reply."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def request(url: str, body: bytes | dict | None = None, accept: str = "image/png", timeout_s: float = 120.0) -> Reply:
    """GET ``url`` (no body) or POST ``body`` (a dict is sent as JSON); HTTP errors are replies too."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"Accept": accept}
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as reply:
            return Reply(reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def parse_events(body: bytes) -> list[tuple[str, dict]]:
    """(event, data) pairs of a server-sent event stream."""
    events = []
    for block in body.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in lines:
            events.append((lines.get("event", "message"), json.loads(lines["data"])))
    return events
