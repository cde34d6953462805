"""``star-deploy run``: generate images from prompts with any backend."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..api import StarPipeline
from ..core import arguments
from ..core.call_options import CallOptions
from ..core.config import SamplingConfig
from ..core.fast import EXACT, FastMode
from ..errors import ConfigError, OutputError
from ..files.atomic import check_separate, check_writable
from ..files.images import to_pil, write_png
from ..files.outputs import OutputSet, output_set
from ..runtime.pipeline import Generation, ScaleEvent, ScaleLoop
from ..runtime.plan import LoadOptions, plan_load
from .common import OverwriteOpt, progress_bar, reports_errors
from .options import takes

log = logging.getLogger("star_deploy")

Prompts = Annotated[list[str], typer.Argument(help="One or more prompts; each gives one image.")]
Out = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="PNG file (one prompt) or folder (several). Default star.png / star_images/."),
]
Previews = Annotated[
    Path | None,
    typer.Option(
        "--previews", help="Also write the coarse image after every scale into this folder (NNN_prompt_scaleKK.png)."
    ),
]


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
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:limit].rstrip("_") or "empty"


def check_outputs(paths: list[Path], overwrite: bool) -> None:
    """Refuse existing or unwritable outputs before any work; nothing is created yet."""
    folder = paths[0].parent
    if len(paths) > 1 and not folder.is_dir():
        if folder.exists():
            raise OutputError(f"--out {folder}: exists and is not a folder; choose a folder name")
        check_writable(folder, overwrite=False)
        return
    for path in paths:
        if path.is_dir():
            raise OutputError(f"--out {path}: is a folder; give a .png file name")
        check_writable(path, overwrite)


def checked_prompts(prompts: list[str], call: CallOptions) -> list[str]:
    """Refuse overflowing seeds and text that is not UTF-8; warn about empty prompts (they generate unconditionally)."""
    if not prompts:
        raise ConfigError("give at least one prompt")
    call.seeds(len(prompts))
    for i, prompt in enumerate(arguments.prompts(prompts)):
        if not prompt.strip():
            log.warning("prompt %d is empty: it generates an unconditional image (cfg has no effect)", i)
    return prompts


def save_images(
    paths: list[Path], prompts: list[str], images: list, meta: dict[str, str], seed: int, overwrite: bool
) -> None:
    """Write one PNG per prompt; an interrupted or failed run removes the PNGs (and folder) it wrote."""
    folder = paths[0].parent if len(paths) > 1 else None
    with output_set(folder) as outputs:
        for i, (path, prompt, image) in enumerate(zip(paths, prompts, images)):
            with outputs.file(path, overwrite) as tmp:
                write_png(tmp, to_pil(image), {"prompt": prompt, "seed": str(seed + i)} | meta)
    for path in paths:
        typer.echo(str(path))


def print_timings(results: list[Generation], images: int, label: str) -> None:
    """A table of seconds per stage over every batch (stderr; hidden by -q)."""
    if not log.isEnabledFor(logging.INFO):
        return
    rows = {
        "text encoder": sum(r.times.text for r in results),
        "transformer steps": sum(sum(r.times.steps) for r in results),
        "sampling": sum(r.times.sampling for r in results),
        "scale update": sum(r.times.update for r in results),
        "VQ decoder": sum(r.times.decode for r in results),
    }
    total = sum(rows.values())
    table = Table(title=f"timings ({label})", show_header=True)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for stage, seconds in rows.items():
        table.add_row(stage, f"{seconds:.3f}", f"{100 * seconds / total:.0f}%" if total else "-")
    table.add_row("total", f"{total:.3f}", f"{images / total:.2f} img/s" if total else "-")
    Console(stderr=True).print(table)


PreviewWriter = Callable[[int, ScaleEvent], None]
"""Called with the batch's first prompt index and each scale's event."""


def generate_batches(
    pipeline: ScaleLoop,
    prompts: list[str],
    sampling: SamplingConfig,
    batch_size: int,
    on_preview: PreviewWriter | None = None,
    fast: FastMode = EXACT,
) -> list[Generation]:
    """Prompts in chunks of ``batch_size``; prompt i always uses seed ``seed + i``."""
    pipeline.check_memory(batch_size, len(prompts))
    results = []
    with progress_bar() as progress:
        task = progress.add_task("scales", total=len(prompts) * pipeline.config.num_scales)
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            seeds = [sampling.seed + start + i for i in range(len(chunk))]

            def on_scale(event: ScaleEvent, start: int = start, count: int = len(chunk)) -> None:
                if on_preview is not None:
                    on_preview(start, event)
                progress.advance(task, count)

            timing = log.isEnabledFor(logging.INFO)  # print_timings shows them; untimed, nothing waits for the device
            results.append(pipeline.generate(chunk, sampling, seeds, on_scale=on_scale, timing=timing, fast=fast))
    return results


def preview_paths(folder: Path, prompts: list[str], num_scales: int) -> list[list[Path]]:
    """``folder/NNN_slug_scaleKK.png`` for every prompt and scale."""
    return [[folder / f"{i:03d}_{slug(p)}_scale{k:02d}.png" for k in range(num_scales)] for i, p in enumerate(prompts)]


def check_previews(folder: Path, overwrite: bool) -> None:
    """Refuse a previews path that is a file, or a folder we cannot create, before any work."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--previews {folder}: exists and is not a folder; choose a folder name")
    if not folder.exists():
        check_writable(folder, overwrite=False)


def preview_writer(
    outputs: OutputSet, paths: list[list[Path]], metas: list[dict[str, str]], overwrite: bool
) -> PreviewWriter:
    """Write each scale's coarse images as PNGs (prompt i's text chunks ``metas[i]``), published through ``outputs``."""

    def write(start: int, event: ScaleEvent) -> None:
        for j, image in enumerate(event.preview()):
            with outputs.file(paths[start + j][event.scale], overwrite) as tmp:
                write_png(tmp, to_pil(image), metas[start + j] | {"scale": str(event.scale)})

    return write


def generate_files(
    prompts: list[str], load: LoadOptions, call: CallOptions, out: Path | None, previews: Path | None, overwrite: bool
) -> None:
    """Check everything, load, generate in batches and write the PNGs (and previews)."""
    checked_prompts(prompts, call)
    paths = output_paths(out, prompts)
    check_outputs(paths, overwrite)
    if previews is not None:
        check_previews(previews, overwrite)
    batch = min(call.batch_size or len(prompts), len(prompts))
    plan = plan_load(replace(load, max_batch_size=batch))
    check_separate(paths + ([previews] if previews is not None else []), plan.inputs)
    pipe = StarPipeline.from_plan(plan)
    sampling = call.sampling(pipe.defaults, pipe.config.transformer.vocab_size)
    mode = call.fast_mode(pipe.config, pipe.decoder)
    meta = {
        "cfg": str(sampling.cfg),
        "top_k": str(sampling.top_k),
        "top_p": str(sampling.top_p),
        "sampler": sampling.sampler,
        "backend": plan.backend,
        "fast": mode.label(),
        "software": "star-deploy",
    }
    with output_set(previews) as preview_outputs:
        writer = None
        if previews is not None:
            names = preview_paths(previews, prompts, pipe.config.num_scales)
            writer = previews_of(preview_outputs, names, prompts, meta, sampling.seed, overwrite)
        results = generate_batches(pipe.loop, prompts, sampling, batch, writer, mode)
        images = [img for r in results for img in r.images]
        save_images(paths, prompts, images, meta, sampling.seed, overwrite)
    print_timings(results, len(images), f"{plan.backend}, {plan.device}")


def previews_of(
    outputs: OutputSet, names: list[list[Path]], prompts: list[str], meta: dict[str, str], seed: int, overwrite: bool
) -> PreviewWriter:
    """The writer of every prompt's per-scale previews (``names``; existing files checked first)."""
    for path in (p for row in names for p in row):
        if path.parent.is_dir():
            check_writable(path, overwrite)
    metas = [meta | {"prompt": p, "seed": str(seed + i)} for i, p in enumerate(prompts)]
    return preview_writer(outputs, names, metas, overwrite)


@takes(CallOptions, "call")
@takes(LoadOptions, "load")
def run(
    prompts: Prompts,
    out: Out = None,
    previews: Previews = None,
    overwrite: OverwriteOpt = False,
    *,
    load: LoadOptions,
    call: CallOptions,
) -> None:
    """Generate images from PROMPTS and write PNGs (prompt, seed and sampler settings embedded).

    With no weight options, the built-in demo model draws the prompt at 128 px (ONNX Runtime on
    its shipped graphs: no PyTorch needed): one circle,
    square or triangle in one of eight colours on a plain background, e.g.
    "a red circle on a blue background" or "white backdrop with a small green square at the top left".
    An empty prompt is legal (STAR's unconditional prompt) and is warned about; prompts over
    77 CLIP tokens are truncated with a warning; --top-k above the codebook size is clamped.
    """
    generate_files(prompts, load, call, out, previews, overwrite)


command = reports_errors(run)
