"""``star-deploy serve``: the STAR HTTP API and web page on Ray Serve, until Ctrl-C or SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import BackendUnavailableError
from .common import reports_errors

BackendOpt = Annotated[
    str | None,
    typer.Option(
        help="torch, onnxruntime or tensorrt. Default: torch with --weights, else onnxruntime (needs no torch)."
    ),
]
ArtifactsOpt = Annotated[
    Path | None, typer.Option(help="Artefact folder from `star-deploy export` (onnxruntime, tensorrt).")
]
ServeWeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights", help="STAR release folder for the torch backend. Default: the built-in demo model (128 px)."
    ),
]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N. Default: cuda for tensorrt, else cpu.")]
DtypeOpt = Annotated[str, typer.Option(help="torch backend compute dtype: float32, float16 or bfloat16.")]
ReplicasOpt = Annotated[int, typer.Option(help="Model replicas, each holding one pipeline.")]
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
    try:
        import fastapi  # noqa: F401
        import ray.serve  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(f"{exc.name} is missing: pip install 'star-deploy[serve]'") from None


def options(backend, weights, artifacts, device, dtype, replicas, num_cpus, num_gpus, max_batch_size, batch_wait):  # noqa: ANN001, ANN201
    """ServeOptions from the shared command-line options."""
    from ..serve.options import ServeOptions

    return ServeOptions(
        backend=backend,
        weights=str(weights) if weights else None,
        artifacts=str(artifacts) if artifacts else None,
        device=device,
        dtype=dtype,
        replicas=replicas,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_batch_size=max_batch_size,
        batch_wait_s=batch_wait,
    )


def serve(
    host: Annotated[
        str, typer.Option(help="Address the HTTP proxy listens on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    backend: BackendOpt = None,
    weights: ServeWeightsOpt = None,
    artifacts: ArtifactsOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "float32",
    replicas: ReplicasOpt = 1,
    num_cpus: CpusOpt = 1.0,
    num_gpus: GpusOpt = 0.0,
    max_batch_size: BatchOpt = 8,
    batch_wait: WaitOpt = 0.1,
    drain_timeout: Annotated[float, typer.Option(help="Seconds to wait for in-flight requests on shutdown.")] = 60.0,
) -> None:
    """Serve STAR over HTTP on a local Ray instance: POST /v1/images, /v1/images:stream, a web page at /, docs at /docs.

    Blocks until Ctrl-C or SIGTERM, then refuses new requests (503), finishes the ones in flight and stops.
    For a cluster, deploy star_deploy.serve.app:build_app with `serve deploy` (see the README).
    """
    require_serve()
    from ..serve.runner import serve_forever

    opts = options(backend, weights, artifacts, device, dtype, replicas, num_cpus, num_gpus, max_batch_size, batch_wait)
    serve_forever(opts, host, port, drain_timeout)


command = reports_errors(serve)
