"""``star-deploy batch``: a prompt file to a resumable folder of PNGs and an index, in-process or on Ray Data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..batch import BatchOptions, RayOptions, Summary, run_batch
from ..core.call_options import CallOptions
from ..errors import ConfigError
from ..runtime.plan import LoadOptions
from .common import OverwriteOpt, reports_errors
from .options import takes

RAY_ONLY = "--workers, --cpus-per-worker and --gpus-per-worker apply to --ray"


def ray_options(address: str | None, workers: int | None, cpus: float | None, gpus: float | None) -> RayOptions | None:
    """The Ray settings, or None to run in this process (then no Ray option may be given)."""
    if address is None:
        if any(v is not None for v in (workers, cpus, gpus)):
            raise ConfigError(f"{RAY_ONLY}; add --ray auto or --ray HOST:PORT")
        return None
    return RayOptions(address, workers or 1, 1.0 if cpus is None else cpus, gpus or 0.0)


def report(summary: Summary, as_json: bool) -> None:
    """The summary on stdout; exit 130/143 when a signal stopped the job, 2 when an error did (after its line)."""
    typer.echo(summary.to_json() if as_json else summary.line())
    if summary.interrupted:
        raise typer.Exit(130 if summary.interrupted == "SIGINT" else 143)
    if summary.error:
        typer.secho(f"error: {summary.error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)


@takes(CallOptions, "call")
@takes(LoadOptions, "load")
def batch(
    prompts: Annotated[Path, typer.Argument(help=".txt (one prompt a line) or .jsonl (one JSON object a line).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (images, index.jsonl, batch.json).")],
    images_per_prompt: Annotated[int, typer.Option(help="Images per prompt (a line's n wins).")] = 1,
    layout: Annotated[str, typer.Option(help="default, or geneval (NNNNN/metadata.jsonl + samples/).")] = "default",
    ray: Annotated[str | None, typer.Option("--ray", help="auto or HOST:PORT: run on that Ray cluster.")] = None,
    workers: Annotated[int | None, typer.Option(help="Ray: actors, each holding one pipeline (1).")] = None,
    cpus_per_worker: Annotated[float | None, typer.Option(help="Ray: CPUs per worker (1).")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(help="Ray: GPUs per worker (0).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The summary as JSON.")] = False,
    overwrite: OverwriteOpt = False,
    *,
    load: LoadOptions,
    call: CallOptions,
) -> None:
    """Generate every prompt of PROMPTS into OUT: PNGs written atomically and an index; run again to resume.

    Image i of the plan uses seed --seed + i; --batch-size images are generated together. On Ray, --threads
    defaults to each worker's CPUs. A .jsonl line is {"prompt": ..., "seed": ..., "n": ..., "cfg": ...,
    "top_k": ..., "top_p": ..., "id": ...}, every field but the prompt optional. A rerun skips finished
    images; other settings or another prompt file for the same OUT are refused unless --overwrite. Ctrl-C or
    SIGTERM stops after the images in flight.
    """
    on_ray = ray_options(ray, workers, cpus_per_worker, gpus_per_worker)
    job = BatchOptions(prompts, out, load, call, images_per_prompt, layout, overwrite, on_ray)
    report(run_batch(job), as_json)


command = reports_errors(batch)
