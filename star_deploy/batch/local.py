"""The in-process loop: one pipeline in this process generates the chunks one after another (no Ray)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..files.signals import stop_requests
from .plan import Chunk
from .writer import ChunkRunner

RowsSink = Callable[[list[dict[str, Any]]], None]
"""Receives the index lines of each finished chunk."""


def run_local(runner: ChunkRunner, chunks: list[Chunk], on_rows: RowsSink) -> str | None:
    """Generate ``chunks`` in order; a first Ctrl-C or SIGTERM stops after the chunk in flight (its name returned)."""
    with stop_requests() as stop:
        for chunk in chunks:
            if stop.requested:
                break
            on_rows(runner(chunk))
        return stop.name
