"""Atomic outputs: a file or folder appears complete under its final name, or not at all."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError
from .signals import raise_if_interrupted

PARTIAL = ".partial-"
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""Write errors that mean the disk (or quota, or file size limit) is full."""
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


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


def _forms(path: Path) -> set[Path]:
    """``path`` made absolute, with and without its symbolic links resolved."""
    return {Path(os.path.abspath(path)), path.resolve()}


def _related(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_separate(outputs: Iterable[Path], inputs: Iterable[Path], option: str = "--out") -> None:
    """Refuse an output that is, contains or is inside one of the inputs (it would be destroyed or changed);
    ``option`` names the output in the message."""
    sources = [(i, f) for i in inputs for f in _forms(i)]
    for out in outputs:
        for form in _forms(out):
            for given, source in sources:
                if _related(form, source):
                    raise OutputError(
                        f"{option} {out}: overlaps the input {given} (is, contains or is inside it); "
                        f"choose an output path outside the inputs"
                    )


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
    """Delete temporaries (files or folders) of ``path`` left by killed processes (their pid is gone)."""
    removed = []
    pattern = re.compile(r"\.+" + re.escape(f"{path.name}{PARTIAL}") + r"(\d+)(\.partial-\d+|\.old)*$")
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


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False where the system or file system does not offer it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return False
    if func(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` atomically; FileExistsError if ``dst`` exists (never replaced)."""
    if _renameat2(src, dst, RENAME_NOREPLACE):
        return
    if src.is_dir():
        if dst.exists() or dst.is_symlink():
            raise FileExistsError(errno.EEXIST, "File exists", str(dst))
        os.rename(src, dst)
        return
    os.link(src, dst)
    src.unlink()


def publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give ``tmp`` the name ``path``; an existing ``path`` is replaced atomically only with ``overwrite``."""
    try:
        if not overwrite:
            _rename_noreplace(tmp, path)
        elif not (path.exists() or path.is_symlink()) or not tmp.is_dir():
            os.replace(tmp, path)
        elif _renameat2(tmp, path, RENAME_EXCHANGE):
            _remove(tmp)
        else:
            old = path.with_name(f".{path.name}{PARTIAL}{os.getpid()}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
    except FileExistsError:
        raise OutputError(
            f"{path}: already exists (written meanwhile by another process?); pass --overwrite to replace it"
        ) from None


def _errnos(exc: BaseException) -> Iterator[int]:
    """The errno of ``exc`` and of every exception it was raised from; libraries that wrap an
    OSError in their own type (safetensors, shutil.Error) are read by its message."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            yield exc.errno
        text = str(exc)
        yield from (code for code in FULL_ERRNOS if os.strerror(code) in text)
        exc = exc.__cause__ or exc.__context__


def write_failure(exc: Exception, path: Path, tmp: Path) -> OutputError | None:
    """The clear error for a write of ``path`` that failed with ``exc``; None if it is not an output problem."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir() or not tmp.parent.is_dir():
        return OutputError(
            f"{parent}: the output folder was removed while {path.name} was written; nothing was kept, run again"
        )
    codes = set(_errnos(exc))
    if codes & set(FULL_ERRNOS):
        code = next(c for c in FULL_ERRNOS if c in codes)
        return OutputError(
            f"{path}: {os.strerror(code).lower()} while writing; nothing was kept; free space or choose another "
            "output path"
        )
    if isinstance(exc, PermissionError) or errno.EACCES in codes or errno.EROFS in codes:
        return OutputError(f"{path}: cannot write ({exc}); choose another output path")
    return None


@contextmanager
def atomic_file(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path``; it becomes ``path`` on success (replacing one only with ``overwrite``)."""
    remove_stale_partials(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        raise_if_interrupted()
        publish(tmp, path, overwrite)
    except Exception as exc:
        failure = write_failure(exc, path, tmp)
        if failure is None:
            raise
        raise failure from None
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
        raise OutputError(
            f"{path.parent}: cannot create a folder there ({exc.strerror}); choose another output path"
        ) from None
    try:
        yield tmp
        raise_if_interrupted()
        publish(tmp, path, overwrite)
    except Exception as exc:
        failure = write_failure(exc, path, tmp / "x")
        if failure is None:
            raise
        raise failure from None
    finally:
        _remove(tmp)


def write_text(path: Path, text: str, overwrite: bool = False) -> None:
    with atomic_file(path, overwrite) as tmp:
        tmp.write_text(text)


def write_bytes(path: Path, data: bytes, overwrite: bool = False) -> None:
    with atomic_file(path, overwrite) as tmp:
        tmp.write_bytes(data)
