"""Checks of ``star-deploy serve``'s settings that need no Ray: address, model files, device, drain, placement."""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path

from ..errors import ArtifactError, ConfigError, WeightsError
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
    """The load plan of what each replica loads (every check that needs no model), errors naming the folder option."""
    from ..runtime.plan import plan_load

    load = options.load
    if load.weights and load.artifacts:
        raise ConfigError("--weights and --artifacts both given: serve a release (--weights) or an export, not both")
    try:
        plan_load(options.model_spec())
    except (WeightsError, ArtifactError) as exc:
        folder = load.weights if isinstance(exc, WeightsError) else load.artifacts
        reason = str(exc).split("; ")[0].removeprefix(f"{folder}: ")
        if load.weights is not None and isinstance(exc, WeightsError):
            raise WeightsError(
                f"--weights {load.weights} holds no STAR release ({reason}); give the release folder"
            ) from None
        if load.artifacts is not None and isinstance(exc, ArtifactError):
            raise ArtifactError(
                f"--artifacts {load.artifacts}: {reason}; give a folder made by `star-deploy export`"
            ) from None
        raise


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


def local_gpus() -> int:
    """The NVIDIA GPUs a local Ray would see: CUDA_VISIBLE_DEVICES where set, else the driver's list (none: 0)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "NoDevFiles"])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def preflight(options: ServeOptions, host: str, port: int, drain_timeout_s: float) -> None:
    """Every check that needs no Ray, before Ray starts (a mistake costs seconds, not a Ray start-up)."""
    check_drain_timeout(drain_timeout_s)
    check_address(host, port)
    check_model(options)
    check_placement(options, local_cpus(), local_gpus())
