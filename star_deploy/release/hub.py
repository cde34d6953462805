"""Hugging Face Hub names: a repo id or a cache folder -> the local snapshot folder it stands for."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import BackendUnavailableError, WeightsError

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9]")
"""``org/name``: what the Hub accepts as a model repo id."""
TRUE = ("1", "on", "yes", "true")


def is_repo_id(path: str | Path) -> bool:
    """A str of the form ``org/name`` that names no local file or folder."""
    return isinstance(path, str) and REPO_ID.fullmatch(path) is not None and not Path(path).exists()


def offline() -> bool:
    """HF_HUB_OFFLINE set (read now, not when huggingface_hub was imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE


def download(repo_id: str, cache_dir: str | Path | None = None, local_files_only: bool = False) -> Path:
    """The local snapshot of ``repo_id``: from the cache when offline, else fetched through the Hub."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise BackendUnavailableError(
            f"{repo_id}: loading from the Hugging Face Hub needs huggingface_hub: pip install 'star-deploy[torch]' "
            f"(or pip install huggingface_hub), or pass a local folder"
        ) from None
    cache = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    cached_only = local_files_only or offline()
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=cached_only))
    except LocalEntryNotFoundError as exc:
        where = cache or "the default cache"
        if not cached_only:
            raise WeightsError(
                f"{repo_id}: no such local folder, not in the Hugging Face cache ({where}), and the Hub cannot be "
                f"reached ({unreachable(exc)}); check the network (or HF_ENDPOINT), or pass a local folder"
            ) from None
        raise WeightsError(
            f"{repo_id}: no such local folder, and not in the Hugging Face cache ({where}) while downloads are off "
            f"({'local_files_only' if local_files_only else 'HF_HUB_OFFLINE'}); download it once online, or pass "
            f"a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise WeightsError(
            f"{repo_id}: no such local folder, nor a repository on the Hugging Face Hub (or it is private)"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise WeightsError(
            f"{repo_id}: no such local folder, and it cannot be downloaded from the Hugging Face Hub ({detail})"
        ) from None


def unreachable(exc: BaseException) -> str:
    """Why the Hub could not be reached: the connection error under huggingface_hub's own."""
    cause = exc.__cause__ or exc.__context__ or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0][:120]}" if text else type(cause).__name__


def hub_snapshot(path: Path) -> Path:
    """A Hugging Face cache folder (models--org--name) -> its snapshot of ``refs/main``, else ``path``."""
    snapshots = path / "snapshots"
    if not snapshots.is_dir():
        return path
    ref = path / "refs" / "main"
    if ref.is_file():
        chosen = snapshots / ref.read_text().strip()
        if chosen.is_dir():
            return chosen
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) != 1:
        raise WeightsError(f"{snapshots}: {len(found)} snapshots and no refs/main; pass the snapshot folder itself")
    return found[0]


def local_folder(path: str | Path, cache_dir: str | Path | None = None, local_files_only: bool = False) -> Path:
    """A local folder, a Hugging Face cache folder, or a Hub repo id -> the folder to load."""
    if is_repo_id(path):
        return download(str(path), cache_dir, local_files_only)
    return hub_snapshot(Path(path))


def option_folder(
    path: str | Path | None, cache_dir: str | Path | None = None, local_files_only: bool = False
) -> Path | None:
    """A folder option (``--weights``, ``--artifacts``, a path): a Hub repo id or cache folder -> its snapshot."""
    if path is None:
        return None
    text = str(path)
    return local_folder(text if is_repo_id(text) else Path(path), cache_dir, local_files_only)
