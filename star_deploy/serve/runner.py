"""Run the application on a local Ray instance; stop it by draining in-flight requests first."""

from __future__ import annotations

import logging
import signal
import threading

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from .app import build
from .options import ServeOptions

log = logging.getLogger("star_deploy.serve")

APP_NAME = "star"


def init_ray(num_cpus: int | None = None) -> None:
    """A local Ray instance without the dashboard (unless one is running already)."""
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False)


def start(
    options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, num_cpus: int | None = None
) -> DeploymentHandle:
    """Start Ray (if needed), Serve's HTTP proxy on host:port and the application; return the ingress handle."""
    init_ray(num_cpus)
    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(build(options), name=APP_NAME, route_prefix="/")
    log.info("serving STAR on http://%s:%d (API docs at /docs)", host, port)
    return handle


def stop(timeout_s: float = 60.0) -> None:
    """Refuse new requests, wait for in-flight ones (at most ``timeout_s``), then shut Serve down."""
    try:
        left = serve.get_app_handle(APP_NAME).drain.remote(timeout_s).result(timeout_s=timeout_s + 10)
        if left:
            log.warning("%d requests still running after %.0f s; shutting down anyway", left, timeout_s)
    except Exception as exc:  # noqa: BLE001 - shutting down regardless
        log.warning("could not drain the ingress (%s); shutting down", exc)
    serve.shutdown()


class StopSignal:
    """Catches SIGINT and SIGTERM from entry to exit (Ray's own handler would abort the process)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.event = threading.Event()
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)

    def handle(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        self.event.set()

    def wait(self) -> int:
        """Block until a signal arrived (at once if one came already); return its number."""
        while not self.event.wait(0.5):
            pass
        return self.received[0]


def serve_forever(options: ServeOptions, host: str, port: int, drain_timeout_s: float = 60.0) -> None:
    """``star-deploy serve``: start, block until Ctrl-C or SIGTERM, drain, shut down."""
    init_ray()
    with StopSignal() as stop_signal:
        start(options, host, port)
        signum = stop_signal.wait()
        log.info("%s received: draining in-flight requests", signal.Signals(signum).name)
        stop(drain_timeout_s)
        ray.shutdown()
    log.info("stopped")
