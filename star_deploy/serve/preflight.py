"""Checks of ``star-deploy serve``'s settings that need no Ray: address, model files, device, drain, placement."""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import socket
from pathlib import Path

from ..errors import BackendUnavailableError, ConfigError, WeightsError
from .options import ServeOptions

log = logging.getLogger("star_deploy.serve")

ADDRESS_ERRORS = {
    errno.EADDRINUSE: "port {port} is in use on {host}; stop what listens there or choose another --port",
    errno.EADDRNOTAVAIL: "--host {host} is not an address of this machine; use 127.0.0.1, 0.0.0.0 or one of its own",
    errno.EACCES: "port {port} needs root (ports below 1024 are privileged); choose --port 1024 or above",
}


def check_drain_timeout(seconds: float) -> None:
    """Refuse a negative or infinite drain timeout."""
    if not 0 <= seconds < float("inf"):
        raise ConfigError(f"--drain-timeout {seconds:g}: give seconds >= 0 (0 stops without waiting)")


def check_address(host: str, port: int) -> None:
    """Refuse a port out of range, a host that does not resolve or is not this machine's, a port in use."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: out of range; choose 1 to 65535 (e.g. 8000)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: cannot be resolved ({exc.strerror}); use 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            template = ADDRESS_ERRORS.get(exc.errno, "cannot listen on {host}:{port} ({reason}); choose another")
            raise ConfigError(template.format(host=host, port=port, reason=exc.strerror)) from None


def check_model(options: ServeOptions) -> None:
    """Refuse an unknown backend, missing or wrong model folders, a backend's missing runtime, a missing GPU."""
    from ..backends.factory import BACKENDS, default_device

    if options.backend is not None and options.backend not in BACKENDS:
        raise ConfigError(f"--backend {options.backend}: unknown; choose one of {', '.join(BACKENDS)}")
    if options.weights and options.artifacts:
        raise ConfigError("--weights and --artifacts both given: serve a release (--weights) or an export, not both")
    runtime = options.runtime
    module = {"torch": "torch", "tensorrt": "tensorrt"}.get(runtime)
    if module and importlib.util.find_spec(module) is None:
        raise BackendUnavailableError(
            f"--backend {runtime} (the default with --weights) needs {module}: pip install 'star-deploy[{runtime}]', "
            "or serve an export with --artifacts DIR on onnxruntime"
        )
    if options.artifacts:
        check_artifacts(Path(options.artifacts), runtime)
    if options.weights:
        check_weights(Path(options.weights), runtime)
    check_device(runtime, default_device(runtime, options.device))


def check_artifacts(folder: Path, runtime: str) -> None:
    """An artefact folder that exists and whose manifest and files verify."""
    from ..artifacts.manifest import load_manifest

    if not folder.is_dir():
        raise ConfigError(f"--artifacts {folder}: no such folder; give a folder made by `star-deploy export`")
    if runtime == "torch":
        raise ConfigError("--backend torch runs a release (--weights DIR); an artefact folder runs on onnxruntime")
    load_manifest(folder)


def check_weights(folder: Path, runtime: str) -> None:
    """A folder that holds a STAR release (or its Hugging Face cache folder), for the torch backend."""
    from ..artifacts.manifest import MANIFEST
    from ..release.finder import resolve_release
    from ..release.hub import is_repo_id, option_folder

    if not folder.exists() and not is_repo_id(str(folder)):
        raise WeightsError(f"--weights {folder}: no such folder; give the folder of the STAR release")
    folder = option_folder(folder)
    if (folder / MANIFEST).is_file():
        raise ConfigError(f"--weights {folder}: an artefact folder from `star-deploy export`; pass it as --artifacts")
    if runtime != "torch":
        raise ConfigError(f"--backend {runtime} runs exported graphs: pass --artifacts DIR instead of --weights")
    try:
        resolve_release(folder)
    except WeightsError as exc:
        reason = str(exc).split("; ")[0]
        raise WeightsError(f"--weights {folder} holds no STAR release ({reason}); give the release folder") from None


def check_device(runtime: str, device: str) -> None:
    """The device name, and a CUDA device only where the backend's runtime can use one."""
    from ..backends import factory

    factory.check_device_name(device)
    if not device.startswith("cuda"):
        return
    if runtime == "onnxruntime":
        import onnxruntime as ort

        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise ConfigError(
                f"--device {device}: onnxruntime {ort.__version__} has no CUDA provider (installed: "
                f"{', '.join(available)}); install onnxruntime-gpu, or use --device cpu"
            )
        return
    if importlib.util.find_spec("torch") is not None:
        factory.check_device(device)


def check_placement(options: ServeOptions, cpus: float, gpus: float) -> None:
    """Refuse replicas whose CPUs or GPUs exceed what Ray has; warn when autoscaling could not reach its maximum."""
    for kind, each, have, flag in (
        ("CPU", options.num_cpus, cpus, "--num-cpus"),
        ("GPU", options.num_gpus, gpus, "--num-gpus"),
    ):
        need = options.min_replicas * each
        if need > have + 1e-9:
            fit = int(have // each) if each else options.min_replicas
            raise ConfigError(
                f"{options.min_replicas} replica(s) x {flag} {each:g} need {need:g} {kind}s but Ray has {have:g} here "
                f"(room for {fit}); lower --replicas or {flag}"
            )
        most = options.max_replicas * each
        if most > have + 1e-9:
            log.warning(
                "autoscaling to %d replicas needs %g %ss; Ray has %g here", options.max_replicas, most, kind, have
            )


def local_cpus() -> int:
    """The CPUs this process may use (affinity, and a cgroup v2 quota where one is set): a local Ray gets these."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return count
    return count if quota == "max" else max(1, min(count, int(quota) // int(period)))


def preflight(options: ServeOptions, host: str, port: int, drain_timeout_s: float) -> None:
    """Every check that needs no Ray, before Ray starts (a mistake costs seconds, not a Ray start-up)."""
    check_drain_timeout(drain_timeout_s)
    check_address(host, port)
    check_model(options)
    check_placement(options, local_cpus(), float("inf"))
