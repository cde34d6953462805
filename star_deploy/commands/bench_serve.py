"""``star-deploy bench-serve``: requests/s and latency of the server against the bare pipeline's batched throughput."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..bench.report import write_json
from ..core.extras import require_torch
from ..errors import ConfigError
from ..files.atomic import check_writable
from ..runtime.plan import LoadOptions, chosen_backend, chosen_device
from .common import OverwriteOpt, reports_errors
from .options import takes
from .serve import BatchOpt, CpusOpt, GpusOpt, ReplicasOpt, WaitOpt, options, require_serve

if TYPE_CHECKING:
    from ..serve.options import ServeOptions

log = logging.getLogger("star_deploy")


def table(report: dict) -> Table:
    """One row per client count: server figures, the pipeline's at the same batch size, their ratio."""
    out = Table(title=f"bench-serve ({report['replicas']} replica(s), max batch {report['max_batch_size']})")
    for name in ("clients", "req/s", "p50 s", "p99 s", "mean batch", "pipeline img/s (batch)", "efficiency", "errors"):
        out.add_column(name, justify="right")
    for row in report["rows"]:
        out.add_row(
            str(row["clients"]),
            f"{row['rps']:.2f}",
            f"{row['p50_s']:.3f}",
            f"{row['p99_s']:.3f}",
            f"{row['mean_batch']:.1f}",
            f"{row['pipeline_img_s']:.2f} ({row['batch_size']})",
            f"{row['efficiency']:.2f}",
            str(row["errors"]),
        )
    return out


def measure_server(levels_text: str, counts: tuple[int, int], out: Path, port: int, options: ServeOptions) -> None:
    """Start a local server, load it at every client count, compare with the bare pipeline, write the report."""
    require_torch("bench-serve (its machine report)")
    import torch

    from ..bench.machine import machine_info
    from ..bench.serve import compare_level, server_load
    from ..serve import runner

    levels = sorted({int(c) for c in levels_text.split(",") if c.strip()})
    if not levels or levels[0] < 1:
        raise ConfigError(f"--clients {levels_text!r}: give positive integers, e.g. 1,8,32")
    requests_per_client, repeats = counts
    batch, replicas = options.max_batch_size, options.replicas
    torch.set_num_threads(max(1, int(options.num_cpus)))
    runner.start(options, "127.0.0.1", port)
    try:
        url = f"http://127.0.0.1:{port}"
        server_load(url, min(levels[-1], batch * replicas), 2)  # warm-up
        rows = []
        for c in levels:
            requests = max(requests_per_client, -(-16 // c))
            rows.append(compare_level(url, options.model_spec(), c, requests, batch, replicas, repeats))
            log.info("%d clients: %.2f req/s, efficiency %.2f", c, rows[-1]["rps"], rows[-1]["efficiency"])
    finally:
        runner.stop(30)
    device = chosen_device(chosen_backend(options.load), options.load)
    report = {
        "machine": machine_info(torch.device(device)),
        "command": " ".join(["star-deploy", *sys.argv[1:]]),
        **options.to_dict(),
        "rows": rows,
    }
    Console().print(table(report))
    write_json(report, out)
    typer.echo(str(out))


Clients = Annotated[str, typer.Option(help="Comma-separated concurrent client counts.")]
Requests = Annotated[int, typer.Option("--requests", help="Requests each client sends (at least 16 per level in all).")]
Repeats = Annotated[int, typer.Option(help="Pipeline batches timed per batch size.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="JSON report.")]
Port = Annotated[int, typer.Option(help="Port of the local server started for the run.")]


@takes(LoadOptions, "load")
def bench_serve(
    clients: Clients = "1,8,32",
    requests_per_client: Requests = 4,
    repeats: Repeats = 4,
    out: Out = Path("bench_serve.json"),
    port: Port = 8000,
    replicas: ReplicasOpt = 1,
    num_cpus: CpusOpt = 1.0,
    num_gpus: GpusOpt = 0.0,
    max_batch_size: BatchOpt = 8,
    batch_wait: WaitOpt = 0.1,
    overwrite: OverwriteOpt = False,
    *,
    load: LoadOptions,
) -> None:
    """Start a local server, load it with 1, 8 and 32 clients, and compare with the bare pipeline on this machine.

    Efficiency = server images/s over the pipeline's images/s at batch size min(clients, max batch) x replicas;
    the pipeline runs in this process with as many threads as one replica, just before and after each load level
    (the higher reading counts).
    """
    require_serve()
    check_writable(out, overwrite)
    settings = options(load, replicas, num_cpus, num_gpus, max_batch_size, batch_wait)
    measure_server(clients, (requests_per_client, repeats), out, port, settings)


command = reports_errors(bench_serve)
