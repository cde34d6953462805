"""Run the application on a local Ray instance; stop it on a signal by draining in-flight requests first."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import LoggingConfig

from ..errors import StarDeployError
from ..files.signals import Interrupted
from .app import build
from .options import ServeOptions
from .preflight import check_placement, local_cpus

log = logging.getLogger("star_deploy.serve")

APP_NAME = "star"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SHUTDOWN_GRACE_S = 15.0
"""Seconds Serve and Ray get to shut down after the drain, before the process exits regardless."""


class DeployFailed(StarDeployError):
    """The application could not start (a replica failed to load)."""


def verbose() -> bool:
    """Whether the user asked for debug output (``-v``)."""
    return logging.getLogger("star_deploy").getEffectiveLevel() <= logging.DEBUG


def ray_logging() -> LoggingConfig:
    """Serve's own logs: warnings only (no per-request lines) unless ``-v``."""
    return LoggingConfig(log_level="INFO" if verbose() else "WARNING", enable_access_log=verbose())


QUIET_LOGGERS = {"ray": logging.WARNING, "ray.serve": logging.WARNING, "ray._private.authentication": logging.ERROR}
"""Ray's start-up and per-request chatter, hidden unless ``-v`` (the token-auth notice is informational)."""


def quiet_ray() -> None:
    """Ray's driver-side loggers at QUIET_LOGGERS' levels, or INFO with ``-v``."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.INFO if verbose() else level)


def init_ray(num_cpus: int | None = None) -> None:
    """A local Ray instance without the dashboard (unless one is running already), quiet unless ``-v``."""
    level = logging.INFO if verbose() else logging.WARNING
    quiet_ray()
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False, logging_level=level)


def start(
    options: ServeOptions,
    host: str = "127.0.0.1",
    port: int = 8000,
    num_cpus: int | None = None,
    stop: threading.Event | None = None,
) -> DeploymentHandle:
    """Start Ray (if needed), Serve's HTTP proxy on host:port and the application; wait until it runs.

    Returns the ingress handle; returns early (the application not running) once ``stop`` is set.
    """
    init_ray(num_cpus)
    resources = ray.cluster_resources()
    check_placement(options, resources.get("CPU", 0.0), resources.get("GPU", 0.0))
    quiet_ray()
    serve.start(http_options={"host": host, "port": port}, logging_config=ray_logging())
    target = serve.RunTarget(build(options), name=APP_NAME, route_prefix="/", logging_config=ray_logging())
    handle = serve.run_many([target], wait_for_applications_running=False)[0]
    if wait_running(stop or threading.Event()):
        log.info("serving STAR on http://%s:%d (web page at /, API docs at /docs)", host, port)
    return handle


def wait_running(stop: threading.Event) -> bool:
    """Wait until the application runs (True) or ``stop`` is set (False); raise if it failed to deploy."""
    while not stop.wait(0.25):
        status = serve.status().applications.get(APP_NAME)
        if status is None:
            continue
        if status.status == "RUNNING":
            return True
        if status.status == "DEPLOY_FAILED":
            lines = [line for line in status.message.splitlines() if line.strip()]
            raise DeployFailed(f"the model replicas failed to start: {lines[-1] if lines else 'see the log with -v'}")
    return False


def running() -> bool:
    """Whether the application runs (requests may be in flight); False while it still deploys."""
    status = serve.status().applications.get(APP_NAME)
    return status is not None and status.status == "RUNNING"


def stop(timeout_s: float = 60.0) -> None:
    """Refuse new requests, wait for in-flight ones (at most ``timeout_s``), then shut Serve down."""
    drain(timeout_s)
    serve.shutdown()


def drain(timeout_s: float) -> None:
    """Make the ingress refuse new requests and wait for in-flight ones (at most ``timeout_s``)."""
    try:
        left = serve.get_app_handle(APP_NAME).drain.remote(timeout_s).result(timeout_s=timeout_s + 5)
        if left:
            log.warning("%d requests still running after %.0f s; shutting down anyway", left, timeout_s)
    except Exception as exc:  # noqa: BLE001 - shutting down regardless
        log.debug("could not drain the ingress (%s); shutting down", exc)


class StopSignal:
    """Catches SIGINT, SIGTERM and SIGHUP from entry to exit; a second signal ends the process at once."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.event = threading.Event()
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        for sig in STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def install(self) -> None:
        """Take the signals back (``ray.init`` installs its own SIGTERM handler, which exits without clean-up)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.handle)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)

    def handle(self, signum: int, _frame: object) -> None:
        if self.received:
            log.warning("%s received again: stopping at once", signal.Signals(signum).name)
            os._exit(128 + signum)
        self.received.append(signum)
        self.event.set()

    def wait(self) -> int:
        """Block until a signal arrived (at once if one came already); return its number."""
        while not self.event.wait(0.5):
            pass
        return self.received[0]


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """End the process (exit 1) if the block has not finished within ``seconds``."""

    def expire() -> None:
        log.error("shutdown took more than %.0f s; exiting without waiting further", seconds)
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def start_ray(stop_signal: StopSignal) -> None:
    """The local Ray instance, a stop signal during its start-up handled like any other.

    While ``ray.init`` runs, SIGTERM reaches Ray's own handler, which raises SystemExit: that is the
    signal, and it stops the server the same way; afterwards the signals are ours again.
    """
    try:
        init_ray(local_cpus())
    except SystemExit:
        stop_signal.handle(signal.SIGTERM, None)
    stop_signal.install()


def serve_forever(options: ServeOptions, host: str, port: int, drain_timeout_s: float = 60.0) -> None:
    """``star-deploy serve``: start, block until SIGINT, SIGTERM or SIGHUP, drain, shut down.

    A signal at any moment (Ray starting, replicas loading, serving) stops it the same way: drain
    what runs, shut Ray down (no process left), then raise ``Interrupted`` (exit 128 + the signal).
    """
    with StopSignal() as stop_signal:
        try:
            start_ray(stop_signal)
            if not stop_signal.event.is_set():
                start(options, host, port, stop=stop_signal.event)
            signum = stop_signal.wait()
            log.info("%s received: draining in-flight requests", signal.Signals(signum).name)
            started = time.monotonic()
            with deadline(drain_timeout_s + SHUTDOWN_GRACE_S):
                if running():
                    drain(drain_timeout_s)
                ray.shutdown()  # ends Serve with the local Ray instance
        except BaseException:
            with deadline(SHUTDOWN_GRACE_S):
                if ray.is_initialized():
                    serve.shutdown()
                ray.shutdown()
            raise
    log.info("stopped %.1f s after the signal", time.monotonic() - started)
    raise Interrupted(signum)
