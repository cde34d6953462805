"""``star-deploy serve``: the STAR HTTP API and web page on Ray Serve, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import BackendUnavailableError
from ..runtime.plan import LoadOptions
from .common import reports_errors
from .options import takes

if TYPE_CHECKING:
    from ..serve.options import ServeOptions

ReplicasOpt = Annotated[
    int, typer.Option(help="Model replicas, each holding one pipeline (the minimum with --max-replicas).")
]
MaxReplicasOpt = Annotated[
    int | None,
    typer.Option(
        "--max-replicas",
        help="Autoscale between --replicas and this many replicas by ongoing requests (target: --max-batch-size).",
    ),
]
CpusOpt = Annotated[
    float, typer.Option("--num-cpus", help="CPUs reserved per replica (also its torch threads on CPU).")
]
GpusOpt = Annotated[
    float, typer.Option("--num-gpus", help="GPUs per replica; fractions (0.5) share one GPU between replicas.")
]
BatchOpt = Annotated[int, typer.Option("--max-batch-size", help="Most requests a replica generates together.")]
WaitOpt = Annotated[float, typer.Option("--batch-wait", help="Seconds a replica waits to fill a batch.")]


def require_serve() -> None:
    """Refuse clearly when the serve extra is missing."""
    for module in ("ray", "fastapi", "swagger_ui_bundle"):
        if importlib.util.find_spec(module) is None:
            raise BackendUnavailableError(f"{module} is missing: pip install 'star-deploy[serve]'")


def options(
    load: LoadOptions,
    replicas: int,
    num_cpus: float,
    num_gpus: float,
    max_batch_size: int,
    batch_wait: float,
    max_replicas: int | None = None,
) -> ServeOptions:
    """ServeOptions from the shared command-line options (errors name the option)."""
    from ..serve.options import ServeOptions

    args = {
        "load": load,
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "max_batch_size": max_batch_size,
        "batch_wait_s": batch_wait,
    }
    if max_replicas is None:
        args["replicas"] = replicas
    else:
        args["autoscaling_config"] = {
            "min_replicas": replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": max_batch_size,
        }
    return ServeOptions.parse(args, flags=True)


def serve_until_stopped(options: ServeOptions, host: str, port: int, drain_timeout: float) -> None:
    """Every check that needs no Ray, then the server until Ctrl-C, SIGTERM or SIGHUP."""
    from ..serve.preflight import preflight

    preflight(options, host, port, drain_timeout)
    from ..serve.runner import serve_forever  # imports Ray: only once the settings are known to be good

    serve_forever(options, host, port, drain_timeout)


Host = Annotated[str, typer.Option(help="Address the HTTP proxy listens on (0.0.0.0: every interface).")]
Port = Annotated[int, typer.Option(help="HTTP port.")]
DrainTimeout = Annotated[
    float, typer.Option(help="Seconds to wait for in-flight requests on shutdown (then it stops regardless).")
]


@takes(LoadOptions, "load")
def serve(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    replicas: ReplicasOpt = 1,
    max_replicas: MaxReplicasOpt = None,
    num_cpus: CpusOpt = 1.0,
    num_gpus: GpusOpt = 0.0,
    max_batch_size: BatchOpt = 8,
    batch_wait: WaitOpt = 0.1,
    drain_timeout: DrainTimeout = 60.0,
    *,
    load: LoadOptions,
) -> None:
    """Serve STAR over HTTP on a local Ray instance: the web page at /, POST /v1/images, /v1/images:stream and
    the OpenAI-compatible /v1/images/generations, docs at /docs.

    Blocks until Ctrl-C, SIGTERM or SIGHUP, then refuses new requests (503), finishes the ones in flight, stops.

    For a cluster, deploy star_deploy.serve.app:build_app with `serve deploy` (see docs/serving.md).
    """
    require_serve()
    settings = options(load, replicas, num_cpus, num_gpus, max_batch_size, batch_wait, max_replicas)
    serve_until_stopped(settings, host, port, drain_timeout)


command = reports_errors(serve)
