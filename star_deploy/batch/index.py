"""``index.jsonl``: one line per finished image (item id, prompt, seed, settings, file, sha256, backend, node).

Lines are appended as images finish, each in one write, so a killed job leaves whole lines (a torn
last line, from a machine crash, is dropped when the job resumes). A job that completes rewrites the
index in plan order, so the same job gives the same index however its work was split.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..files.atomic import write_text
from .plan import ImageTask

INDEX = "index.jsonl"
FIELDS = (
    "id",
    "image",
    "prompt",
    "seed",
    "cfg",
    "top_k",
    "top_p",
    "sampler",
    "fast",
    "file",
    "sha256",
    "backend",
    "precision",
    "node",
    "key",
)
"""The fields of an index line, in order."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_index(path: Path) -> Iterator[dict[str, Any]]:
    """The index's lines that parse as JSON objects (a torn or foreign line is skipped)."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("file"), str):
                yield row


def verified_rows(out: Path, tasks: list[ImageTask]) -> dict[int, dict[str, Any]]:
    """The index lines of images that are done: same key as the plan's, file present, sha256 matching.

    A file whose index line does not match it was changed after the job wrote it: refused, not replaced.
    """
    by_file = {t.file: t for t in tasks}
    done: dict[int, dict[str, Any]] = {}
    for row in read_index(out / INDEX):
        task = by_file.get(row["file"])
        if task is None or row.get("key") != task.key or task.ordinal in done:
            continue
        path = out / task.file
        if not path.is_file():
            continue
        if sha256_file(path) != row.get("sha256"):
            raise OutputError(
                f"{path}: changed since the job wrote it (its sha256 differs from {INDEX}); remove it to generate it "
                "again, or pass --overwrite to start over"
            )
        done[task.ordinal] = row
    return done


def dumps_row(row: dict[str, Any]) -> str:
    return json.dumps({k: row.get(k) for k in FIELDS}, ensure_ascii=False) + "\n"


def rewrite_index(out: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace the index atomically with ``rows`` (the job's own file)."""
    write_text(out / INDEX, "".join(dumps_row(r) for r in rows), overwrite=True)


class IndexAppender:
    """Appends lines to the index, one ``write`` per line, flushed to the file system at once."""

    def __init__(self, out: Path) -> None:
        self.fd = os.open(out / INDEX, os.O_WRONLY | os.O_APPEND)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            os.write(self.fd, dumps_row(row).encode())

    def close(self) -> None:
        os.close(self.fd)
