"""The files one command writes, kept together: all of them on success, none of them on failure."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError
from .atomic import atomic_file

log = logging.getLogger("star_deploy")


class OutputSet:
    """Files published one by one; ``rollback`` removes those this process wrote and a folder it created."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self.created_folder = False
        self.written: list[tuple[Path, int]] = []

    def _ensure_folder(self) -> None:
        if self.folder is None or self.created_folder or self.folder.is_dir():
            return
        try:
            self.folder.mkdir()
        except OSError as exc:
            raise OutputError(
                f"{self.folder}: cannot create the output folder ({exc.strerror}); choose another output path"
            ) from None
        self.created_folder = True

    @contextmanager
    def file(self, path: Path, overwrite: bool) -> Iterator[Path]:
        """A temporary path to write; it becomes ``path`` (recorded by inode before it is published)."""
        self._ensure_folder()
        with atomic_file(path, overwrite) as tmp:
            yield tmp
            self.written.append((path, os.stat(tmp).st_ino))

    def rollback(self) -> list[Path]:
        """Remove what this set published (if still ours) and the folder it created; returns what stayed."""
        kept = []
        for path, inode in reversed(self.written):
            try:
                if os.stat(path).st_ino == inode:
                    path.unlink()
            except FileNotFoundError:
                continue
            except OSError:
                kept.append(path)
        if self.created_folder and self.folder is not None:
            try:
                self.folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                kept.append(self.folder)
        return kept


@contextmanager
def output_set(folder: Path | None = None) -> Iterator[OutputSet]:
    """An ``OutputSet`` that is rolled back if the block fails or is interrupted."""
    outputs = OutputSet(folder)
    try:
        yield outputs
    except BaseException:
        kept = outputs.rollback()
        if kept:
            log.warning("could not remove %s", ", ".join(map(str, kept)))
        raise
