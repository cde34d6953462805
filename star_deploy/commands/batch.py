"""``star-deploy batch``: a prompt file to a resumable folder of PNGs and an index, in-process or on Ray Data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ..batch import BatchOptions, ItemSampling, RayOptions, Summary, model_spec, run_batch
from ..errors import ConfigError
from .common import ClipOpt, OverwriteOpt, ResolutionOpt, SamplerOpt, StarOpt, VaeOpt, WeightsOpt, reports_errors

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


def batch(
    prompts: Annotated[Path, typer.Argument(help=".txt (one prompt a line) or .jsonl (one JSON object a line).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (images, index.jsonl, batch.json).")],
    seed: Annotated[int, typer.Option(help="Seed of the first image; image i of the plan uses seed+i.")] = 0,
    images_per_prompt: Annotated[int, typer.Option(help="Images per prompt (a line's n wins).")] = 1,
    cfg: Annotated[float | None, typer.Option(help="Guidance strength. Default: the model's.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Top-k (0: off). Default: the model's.")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus mass. Default: the model's.")] = None,
    sampler: SamplerOpt = "portable",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images generated together.")] = 1,
    layout: Annotated[str, typer.Option(help="default, or geneval (NNNNN/metadata.jsonl + samples/).")] = "default",
    backend: Annotated[str | None, typer.Option(help="torch, onnxruntime or tensorrt (as run).")] = None,
    artifacts: Annotated[Path | None, typer.Option(help="Artefact folder. Default: the demo's.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N.")] = None,
    dtype: Annotated[str | None, typer.Option(help="torch compute dtype (default float32).")] = None,
    threads: Annotated[int, typer.Option(help="onnxruntime threads (0: one per core; on Ray: per worker CPU).")] = 0,
    provider: Annotated[str | None, typer.Option(help="onnxruntime execution provider.")] = None,
    weights: WeightsOpt = None,
    clip: ClipOpt = None,
    vae: VaeOpt = None,
    star: StarOpt = None,
    resolution: ResolutionOpt = None,
    ray: Annotated[str | None, typer.Option("--ray", help="auto or HOST:PORT: run on that Ray cluster.")] = None,
    workers: Annotated[int | None, typer.Option(help="Ray: actors, each holding one pipeline (1).")] = None,
    cpus_per_worker: Annotated[float | None, typer.Option(help="Ray: CPUs per worker (1).")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(help="Ray: GPUs per worker (0).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The summary as JSON.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate every prompt of PROMPTS into OUT: PNGs written atomically and an index; run again to resume.

    A .jsonl line is {"prompt": ..., "seed": ..., "n": ..., "cfg": ..., "top_k": ..., "top_p": ..., "id": ...},
    every field but the prompt optional. A rerun skips finished images; other settings or another prompt file
    for the same OUT are refused unless --overwrite. Ctrl-C or SIGTERM stops after the images in flight.
    """
    parts = {"clip": clip, "vae": vae, "star": star}
    runtime = {"dtype": dtype, "resolution": resolution, "threads": threads, "provider": provider}
    model = model_spec(backend, artifacts, weights, parts, device, **runtime)
    on_ray = ray_options(ray, workers, cpus_per_worker, gpus_per_worker)
    plan = {"seed": seed, "images_per_prompt": images_per_prompt, "sampling": ItemSampling(cfg, top_k, top_p)}
    job = BatchOptions(prompts, out, model, **plan, sampler=sampler, batch_size=batch_size, layout=layout, ray=on_ray)
    report(run_batch(replace(job, overwrite=overwrite)), as_json)


command = reports_errors(batch)
