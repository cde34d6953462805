"""The cache of ONNX Runtime's optimized graphs: where it lives, how an entry is named, checked and stored.

An entry is named ``<graph>.<provider>.ort<version>.<source sha256>.<machine>.<format>.<own digest>.onnx``
and carries, in its ONNX metadata, the sha256 of the graph it was optimized from. An entry is
used only if it is a regular file whose contents match its digest, whose source digest is
this graph's and whose inputs and outputs are this graph's; anything else (a damaged file,
another graph's entry, a FIFO or a folder under an entry's name) is reported, removed and
rebuilt. Entries are written under a temporary name and renamed when whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import stat
import tempfile
from pathlib import Path
from types import ModuleType

from ..artifacts.graph_io import io_problem
from ..artifacts.manifest import Manifest
from ..artifacts.onnx_io import append_metadata, read_header
from ..core.cpu_isa import cpu_flags
from ..errors import ArtifactError
from ..files.atomic import PARTIAL
from ..files.regular import is_regular, open_regular

log = logging.getLogger(__name__)

CACHE_DIR = "ort_cache"
CACHE_FORMAT = "v2"
"""v2: entries carry their source graph's sha256 and name in their metadata."""
SOURCE_KEY = "star_deploy.source_sha256"
GRAPH_KEY = "star_deploy.graph"
PACKAGE = Path(__file__).resolve().parent.parent


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path, follow_links=False) as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()[:16]


def machine_tag() -> str:
    """A short digest of the CPU architecture and instruction sets: an optimized graph may hold kernels
    chosen for them (ONNX Runtime's NCHWc layout blocks by vector width), so a cache is per machine kind."""
    return hashlib.sha256(",".join([platform.machine(), *cpu_flags()]).encode()).hexdigest()[:8]


def cache_key(ort: ModuleType, manifest: Manifest, graph: str, provider: str) -> str:
    """The name every cache entry of ``graph`` optimized for ``provider`` on this machine starts with."""
    source = manifest.graph_hashes[graph][:16]
    return f"{graph}.{provider}.ort{ort.__version__}.{source}.{machine_tag()}.{CACHE_FORMAT}"


def entry_problem(path: Path, key: str, manifest: Manifest, graph: str) -> str | None:
    """Why the file at ``path`` cannot serve as the cache entry of ``graph``, or None if it can."""
    if not is_regular(path):
        return "not a regular file"
    try:
        if path.name != f"{key}.{_digest(path)}.onnx":
            return "its contents do not match its digest"
        header = read_header(path)
    except (OSError, ArtifactError):
        return "not a readable ONNX graph"
    if header.metadata.get(SOURCE_KEY) != manifest.graph_hashes[graph]:
        return "optimized from another graph"
    return io_problem(header, manifest.graphs[graph])


def discard(path: Path) -> None:
    """Remove a cache entry that cannot be used, whatever it is (the cache folder holds only our entries)."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as exc:
        log.warning("cannot remove %s (%s); remove it by hand", path, exc.strerror or exc)


def cached_entry(folder: Path, key: str, manifest: Manifest, graph: str) -> Path | None:
    """The usable cache entry of ``graph`` under ``key``; entries that are not are reported and removed."""
    for path in sorted(folder.glob(f"{key}.*.onnx")):
        problem = entry_problem(path, key, manifest, graph)
        if problem is None:
            return path
        log.warning("optimized-graph cache entry %s is not usable (%s); rebuilding it", path, problem)
        discard(path)
    return None


def new_entry(folder: Path, key: str) -> Path | None:
    """A fresh, empty temporary file for ONNX Runtime to write an optimized graph into; None if none can be made."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{key}{PARTIAL}", dir=folder)
    except OSError:
        return None
    os.close(fd)
    return Path(name)


def store_entry(tmp: Path, folder: Path, key: str, manifest: Manifest, graph: str) -> None:
    """Bind the optimized graph in ``tmp`` to its source and give it its final name; a failure only warns."""
    try:
        if not is_regular(tmp) or tmp.stat().st_size == 0:
            return
        append_metadata(tmp, {SOURCE_KEY: manifest.graph_hashes[graph], GRAPH_KEY: graph})
        os.replace(tmp, folder / f"{key}.{_digest(tmp)}.onnx")
    except OSError as exc:
        log.warning(
            "cannot store the optimized %s graph in %s (%s); it is optimized again next time",
            graph,
            folder,
            exc.strerror or exc,
        )


def user_cache() -> Path | None:
    """The per-user cache of optimized graphs: ``$XDG_CACHE_HOME/star-deploy/ort_cache``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG spec says; the default is ``~/.cache``.
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:
            return None
    return Path(base) / "star-deploy" / CACHE_DIR


def cache_folder(root: Path) -> Path | None:
    """``root/ort_cache`` for a writable artefact folder outside the package, else the user cache;
    None where neither can be written (no cache)."""
    inside_package = root.resolve().is_relative_to(PACKAGE)
    candidates = ([] if inside_package else [root / CACHE_DIR]) + [user_cache()]
    for folder in candidates:
        if folder is not None and _prepare(folder):
            return folder
    return None


def _prepare(folder: Path) -> bool:
    """Create ``folder`` (and its parents) if we can; whether it is a writable folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return folder.is_dir() and os.access(folder, os.W_OK)
