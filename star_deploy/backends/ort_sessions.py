"""ONNX Runtime sessions as users configure them: execution providers, options, a cache of optimized graphs.

The first load of a graph writes ORT's optimized form to ``DIR/ort_cache/``, or, for the
graphs shipped inside the package (the demo) and for a read-only DIR, to the user's cache
(``$XDG_CACHE_HOME/star-deploy/ort_cache``, default ``~/.cache``); later loads read it with
optimizations off and skip that work. A cache file is named by the graph's sha256, the
provider, the ORT version and the CPU's instruction sets, and carries a digest of its own
contents, so a stale, foreign or damaged file is never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from pathlib import Path
from types import ModuleType
from typing import Any

from ..artifacts.manifest import Manifest
from ..cpu_isa import cpu_flags
from ..errors import BackendUnavailableError, ConfigError

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
}
"""--provider name -> ONNX Runtime execution provider."""

DEVICE_BUFFERS = {"cuda": "cuda", "tensorrt": "cuda"}
"""Providers whose KV cache lives in device memory; the rest use host memory."""

CACHE_DIR = "ort_cache"
PACKAGE = Path(__file__).resolve().parent.parent


def provider_entry(
    ort: ModuleType, provider: str, device_id: int, options: dict[str, Any] | None
) -> tuple[list, tuple[str, int]]:
    """The session's provider list (with CPU fallback) and the (device type, id) of its buffers."""
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    name = PROVIDERS[provider]
    available = ort.get_available_providers()
    if name not in available:
        raise BackendUnavailableError(
            f"onnxruntime {ort.__version__} has no {name} (installed: {', '.join(available)}); "
            "install the onnxruntime build that has it (e.g. onnxruntime-gpu for cuda and tensorrt), or use "
            "--provider cpu"
        )
    buffers = DEVICE_BUFFERS.get(provider, "cpu")
    settings = dict(options or {})
    if buffers == "cuda":
        settings.setdefault("device_id", device_id)
    entry = [(name, settings)] if settings else [name]
    return (entry + ["CPUExecutionProvider"] if provider != "cpu" else entry), (
        buffers,
        device_id if buffers == "cuda" else 0,
    )


def _options(ort: ModuleType, threads: int):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return options


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()[:16]


def machine_tag() -> str:
    """A short digest of the CPU architecture and instruction sets: an optimized graph may hold kernels
    chosen for them (ONNX Runtime's NCHWc layout blocks by vector width), so a cache is per machine kind."""
    return hashlib.sha256(",".join([platform.machine(), *cpu_flags()]).encode()).hexdigest()[:8]


def _cache_key(ort: ModuleType, manifest: Manifest, graph: str, provider: str) -> str:
    return f"{graph}.{provider}.ort{ort.__version__}.{manifest.graph_hashes[graph][:16]}.{machine_tag()}"


def _cached(folder: Path, key: str) -> Path | None:
    """A cache file for ``key`` whose contents match the digest in its name; damaged ones are deleted."""
    for path in folder.glob(f"{key}.*.onnx"):
        if path.name == f"{key}.{_digest(path)}.onnx":
            return path
        log.debug("removing damaged ORT cache file %s", path)
        path.unlink(missing_ok=True)
    return None


def create_session(
    ort: ModuleType, manifest: Manifest, graph: str, providers: list, provider: str, threads: int, user_options: Any
):
    """An InferenceSession of ``graph``; optimized once and cached (``cache_folder``) where possible."""
    source = manifest.path(graph)
    if user_options is not None:
        return ort.InferenceSession(str(source), user_options, providers=providers)
    key = _cache_key(ort, manifest, graph, provider)
    external = source.with_name(source.name + ".data").exists()
    folder = None if external else cache_folder(manifest.root)
    cached = None if folder is None else _cached(folder, key)
    options = _options(ort, threads)
    if cached is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(str(cached), options, providers=providers)
    if folder is None:
        return ort.InferenceSession(str(source), options, providers=providers)
    tmp = folder / f".{key}.partial-{os.getpid()}"
    options.optimized_model_filepath = str(tmp)
    try:
        session = ort.InferenceSession(str(source), options, providers=providers)
        if tmp.is_file():
            os.replace(tmp, folder / f"{key}.{_digest(tmp)}.onnx")
    finally:
        tmp.unlink(missing_ok=True)
    return session


def user_cache() -> Path:
    """The per-user cache of optimized graphs: ``$XDG_CACHE_HOME/star-deploy/ort_cache``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "star-deploy" / CACHE_DIR


def cache_folder(root: Path) -> Path | None:
    """``root/ort_cache`` for a writable artefact folder outside the package, else the user cache;
    None where neither can be written (no cache)."""
    inside_package = root.resolve().is_relative_to(PACKAGE)
    for folder in ([] if inside_package else [root / CACHE_DIR]) + [user_cache()]:
        if _prepare(folder):
            return folder
    return None


def _prepare(folder: Path) -> bool:
    """Create ``folder`` (and its parents) if we can; whether it is writable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)
