"""The output folder of a batch job: created whole, continued, or started over; one job at a time.

A new job's folder appears with its record, the copy of its prompt file, an empty index and the
layout's folders, or not at all (``atomic_dir``). ``--overwrite`` swaps a fresh folder in for an
earlier job's; a folder that holds no batch job is never replaced.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..files.atomic import PARTIAL, atomic_dir, check_writable, write_bytes
from .index import INDEX
from .record import RECORD, check_same_job, dumps, read_job


@dataclass(frozen=True)
class Skeleton:
    """What a job's folder holds before any image: files (relative path -> contents) and folders."""

    files: dict[str, bytes]
    folders: list[str]


def state(out: Path, overwrite: bool) -> str:
    """``new`` (create it), ``resume`` (a job is there), or ``replace`` (an empty folder, or --overwrite)."""
    if not out.exists():
        check_writable(out, overwrite=False)
        return "new"
    if not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder; choose a folder name")
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out}: not writable; choose another output folder")
    if (out / RECORD).is_file():
        return "replace" if overwrite else "resume"
    if any(out.iterdir()):
        raise OutputError(
            f"--out {out}: a folder with other files and no {RECORD} (not a batch job); choose a new or empty folder"
        )
    return "replace"


def create(out: Path, skeleton: Skeleton, replace: bool) -> None:
    """The job's folder with its skeleton, appearing complete (over an empty or earlier job's folder if ``replace``)."""
    with atomic_dir(out, overwrite=replace) as tmp:
        fill(tmp, skeleton)


def fill(root: Path, skeleton: Skeleton) -> None:
    """The skeleton's folders, and its files that are missing (a resumed job's layout files too)."""
    for folder in skeleton.folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, data in skeleton.files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            write_bytes(path, data)


def refuse_other_job(out: Path, record: dict[str, Any], prompts: Path, overwrite: bool) -> None:
    """Before the model loads: refuse an ``out`` that cannot be written or holds a job with other settings."""
    if state(out, overwrite) == "resume":
        check_same_job(out, read_job(out), record, prompts)


def open_job(out: Path, skeleton: Skeleton, record: dict[str, Any], prompts: Path, overwrite: bool) -> bool:
    """Create, start over or continue the job in ``out``; True when an earlier run's images may be there."""
    found = state(out, overwrite)
    if found == "resume":
        check_same_job(out, read_job(out), record, prompts)
        fill(out, skeleton)
        return True
    create(out, skeleton, replace=found == "replace")
    return False


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold ``out`` for this process: a second job on the same folder is refused while this one runs."""
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"--out {out}: another `star-deploy batch` is writing there; wait for it or choose another folder"
            ) from None
        yield
    finally:
        os.close(fd)


def remove_partials(out: Path, folders: list[str]) -> None:
    """Remove temporaries that killed writers left in the image folders (only once every image is done)."""
    for folder in folders:
        for entry in os.scandir(out / folder):
            if entry.name.startswith(".") and PARTIAL in entry.name:
                Path(entry.path).unlink(missing_ok=True)


def skeleton_files(record: dict[str, Any], prompts_copy: str, prompts_data: bytes) -> dict[str, bytes]:
    """The record, an empty index and the copy of the prompt file."""
    return {RECORD: dumps(record).encode(), INDEX: b"", prompts_copy: prompts_data}
