"""``star-deploy run``: generate images from prompts with any backend."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..atomic import check_writable
from ..backends.factory import artifacts_manifest, create_backend, needs_artifacts
from ..config import SamplingConfig
from ..errors import ConfigError
from ..images import save_png
from ..model.text import PromptTokenizer
from ..pipeline import Generation, StarPipeline
from .common import (
    ClipOpt,
    OverwriteOpt,
    ResolutionOpt,
    StarOpt,
    VaeOpt,
    WeightsOpt,
    load_model,
    reports_errors,
)

log = logging.getLogger("star_deploy")


def output_paths(out: Path | None, prompts: list[str]) -> list[Path]:
    """One .png file for one prompt; a folder of numbered files for several."""
    if len(prompts) == 1:
        path = out or Path("star.png")
        if path.suffix.lower() != ".png":
            raise ConfigError(f"--out {path}: give a .png file name for a single prompt")
        return [path]
    folder = out or Path("star_images")
    if folder.suffix.lower() == ".png":
        raise ConfigError(f"--out {folder}: several prompts need a folder, not a .png file")
    return [folder / f"{i:03d}_{slug(p)}.png" for i, p in enumerate(prompts)]


def slug(prompt: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:limit] or "empty"


def check_outputs(paths: list[Path], overwrite: bool) -> None:
    folder = paths[0].parent
    if len(paths) > 1:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"--out {folder}: exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        check_writable(path, overwrite)


def generate_batches(
    pipeline: StarPipeline, prompts: list[str], sampling: SamplingConfig, batch_size: int
) -> list[Generation]:
    """Prompts in chunks of ``batch_size``; prompt i always uses seed ``seed + i``."""
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True) as progress:
        task = progress.add_task("scales", total=len(prompts) * pipeline.config.num_scales)
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            seeds = [sampling.seed + start + i for i in range(len(chunk))]
            advance = lambda k, n: progress.advance(task, len(chunk))  # noqa: E731
            results.append(pipeline.generate(chunk, sampling, seeds, on_scale=advance))
    return results


def run(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts; each gives one image.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="PNG file (one prompt) or folder (several). Default star.png / star_images/.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first prompt; prompt i uses seed+i.")] = 0,
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance strength (ramps from 0 over the scales).")] = 4.0,
    top_k: Annotated[int, typer.Option("--top-k", help="Keep the k most likely tokens (0: off; clamped to the codebook size).")] = 600,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass in (0, 1].")] = 0.8,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts generated together.")] = 1,
    backend: Annotated[str, typer.Option(help="torch, onnxruntime or tensorrt.")] = "torch",
    artifacts: Annotated[Path | None, typer.Option(help="Artefact folder from `star-deploy export` (onnxruntime, tensorrt).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="torch backend compute dtype: float32, float16 or bfloat16.")] = "float32",
    weights: WeightsOpt = None,
    clip: ClipOpt = None,
    vae: VaeOpt = None,
    star: StarOpt = None,
    resolution: ResolutionOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate images from PROMPTS and write PNGs (prompt, seed and sampler settings embedded).

    With no weight options, the built-in demo model (128 px, simple shapes) is used.
    """
    sampling = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p, seed=seed)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if not prompts:
        raise ConfigError("give at least one prompt")
    paths = output_paths(out, prompts)
    check_outputs(paths, overwrite)
    if needs_artifacts(backend):
        manifest = artifacts_manifest(artifacts, backend)
        engine = create_backend(backend, device, manifest=manifest)
        tokenizer = PromptTokenizer(manifest.tokenizer_dir)
    else:
        model = load_model(weights, clip, vae, star, resolution)
        engine = create_backend(backend, device, model=model, dtype=dtype)
        tokenizer = PromptTokenizer(model.tokenizer_dir)
    pipeline = StarPipeline(engine, tokenizer)
    if sampling.top_k > pipeline.config.transformer.vocab_size:
        log.warning("top-k %d exceeds the codebook size; using %d", top_k, pipeline.config.transformer.vocab_size)
    results = generate_batches(pipeline, prompts, sampling, batch_size)
    images = [img for r in results for img in r.images]
    for i, (path, prompt, image) in enumerate(zip(paths, prompts, images)):
        meta = {
            "prompt": prompt, "seed": str(seed + i), "cfg": str(cfg), "top_k": str(sampling.top_k),
            "top_p": str(top_p), "backend": backend, "software": "star-deploy",
        }
        save_png(path, image, meta)
        typer.echo(str(path))
    total = sum(r.times.total for r in results)
    log.info("%d image(s) in %.2f s (%s, %s)", len(images), total, backend, device)


command = reports_errors(run)
