"""ONNX Runtime sessions as users configure them: execution providers, options, a cache of optimized graphs.

The first load of a graph writes ORT's optimized form to ``DIR/ort_cache/``, or, for the
graphs shipped inside the package (the demo) and for a read-only DIR, to the user's cache
(``$XDG_CACHE_HOME/star-deploy/ort_cache``, default ``~/.cache``); later loads read it with
optimizations off and skip that work (``ort_cache.py`` says how an entry is named and checked:
a stale, foreign or damaged entry is never used, but rebuilt).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from types import ModuleType
from typing import Any

from ..artifacts.loadable import is_load_error, unreadable
from ..artifacts.manifest import Manifest
from ..errors import ArtifactError, BackendUnavailableError, ConfigError
from .devices import is_cuda
from .ort_cache import CACHE_DIR, cache_folder, cache_key, cached_entry, discard, new_entry, store_entry

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


def default_provider(device: str) -> str:
    """The provider a device implies when none is given: CUDA's for a CUDA device, else the CPU's."""
    return "cuda" if is_cuda(device) else "cpu"


def check_provider(provider: str | None, device: str) -> None:
    """Refuse an unknown provider, or one this onnxruntime build lacks (with none given: the device's)."""
    name = provider or default_provider(device)
    if name not in PROVIDERS:
        raise ConfigError(f"--provider {provider!r}: unknown provider; choose one of {', '.join(PROVIDERS)}")
    import onnxruntime as ort

    available = ort.get_available_providers()
    if PROVIDERS[name] not in available:
        option, value = ("--provider", provider) if provider else ("--device", device)
        raise BackendUnavailableError(
            f"{option} {value}: onnxruntime {ort.__version__} has no {PROVIDERS[name]} (installed: "
            f"{', '.join(available)}); install the onnxruntime build that has it (e.g. onnxruntime-gpu for cuda and "
            f"tensorrt), or use {option} cpu"
        )


def provider_entry(
    ort: ModuleType, provider: str, device_id: int, options: dict[str, Any] | None
) -> tuple[list, tuple[str, int]]:
    """The session's provider list (with CPU fallback) and the (device type, id) of its buffers."""
    name = PROVIDERS[provider]
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


def create_sessions(ort: ModuleType, manifest: Manifest, *args: Any, skip: Collection[str] = ()) -> dict[str, Any]:
    """A session of every graph but ``skip`` (``create_session``'s arguments after the graph); when one cannot be
    loaded, the optimized-graph cache entries the others stored are removed: a failed load leaves the folder
    as it was."""
    folder = manifest.root / CACHE_DIR
    existed = folder.is_dir()
    before = set(folder.iterdir()) if existed else set()
    try:
        return {name: create_session(ort, manifest, name, *args) for name in manifest.graphs if name not in skip}
    except ArtifactError:
        if folder.is_dir():
            for entry in set(folder.iterdir()) - before:
                discard(entry)
            if not existed:
                folder.rmdir()
        raise


def create_session(
    ort: ModuleType, manifest: Manifest, graph: str, providers: list, provider: str, threads: int, user_options: Any
):
    """An InferenceSession of ``graph``; optimized once and cached (``cache_folder``) where possible."""
    source = manifest.path(graph)
    if user_options is not None:
        return open_session(ort, source, user_options, providers)
    external = source.with_name(source.name + ".data").exists()
    folder = None if external else cache_folder(manifest.root)
    if folder is None:
        return open_session(ort, source, _options(ort, threads), providers)
    key = cache_key(ort, manifest, graph, provider)
    cached = cached_entry(folder, key, manifest, graph)
    if cached is not None:
        session = _cached_session(ort, cached, threads, providers)
        if session is not None:
            return session
    return _optimized_session(ort, source, folder, key, manifest, graph, threads, providers)


def open_session(ort: ModuleType, source: Path, options: Any, providers: list):
    """An InferenceSession of ``source``; a file ONNX Runtime cannot load is an ArtifactError naming it."""
    try:
        return ort.InferenceSession(str(source), options, providers=providers)
    except Exception as exc:
        if is_load_error(exc):
            raise unreadable(source, exc) from None
        raise


def _cached_session(ort: ModuleType, cached: Path, threads: int, providers: list):
    """A session of an already optimized graph; None (the entry removed) if ONNX Runtime cannot load it."""
    options = _options(ort, threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(cached), options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises several types for a file it cannot load
        log.warning("optimized-graph cache entry %s does not load (%s); rebuilding it", cached, str(exc)[:120])
        discard(cached)
        return None


def _optimized_session(
    ort: ModuleType, source: Path, folder: Path, key: str, manifest: Manifest, graph: str, threads: int, providers: list
):
    """A session of ``source``, whose optimized form is stored in the cache on the way."""
    options = _options(ort, threads)
    tmp = new_entry(folder, key)
    if tmp is None:
        return open_session(ort, source, options, providers)
    options.optimized_model_filepath = str(tmp)
    try:
        session = open_session(ort, source, options, providers)
        store_entry(tmp, folder, key, manifest, graph)
    finally:
        tmp.unlink(missing_ok=True)
    return session
