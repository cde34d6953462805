"""Atomic outputs: a file or folder appears complete under its final name, or not at all."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

PARTIAL = ".partial-"


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse an existing output (unless ``overwrite``) or a parent folder we cannot write to."""
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"{parent}: folder does not exist; create it or choose another output path")
    if not parent.is_dir():
        raise OutputError(f"{parent}: is not a folder; choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent}: not writable; choose another output path")


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL}{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(path: Path) -> list[Path]:
    """Delete temporaries of ``path`` left by killed processes (their pid is gone)."""
    removed = []
    pattern = re.compile(re.escape(f".{path.name}{PARTIAL}") + r"(\d+)$")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return removed
    for candidate in parent.iterdir():
        match = pattern.match(candidate.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            _remove(candidate)
            removed.append(candidate)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except PermissionError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror}); choose another output path") from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; swap it in only on success."""
    check_writable(path, overwrite)
    remove_stale_partials(path)
    tmp = _temp_name(path)
    _remove(tmp)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot create a folder there ({exc.strerror}); choose another output path") from None
    try:
        yield tmp
        _swap_in(tmp, path)
    finally:
        _remove(tmp)


def _swap_in(tmp: Path, path: Path) -> None:
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
