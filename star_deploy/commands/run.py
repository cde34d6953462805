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
from ..artifacts.manifest import MANIFEST, read_manifest
from ..artifacts.schema import parse_config
from ..backends.factory import check_backend_device, default_device, needs_artifacts
from ..backends.ort_sessions import check_provider
from ..core.config import SamplingConfig
from ..core.fast import EXACT, FastMode
from ..demo import DEMO_GRAPHS
from ..errors import ConfigError, OutputError
from ..files.atomic import check_separate, check_writable
from ..files.images import to_pil, write_png
from ..files.outputs import OutputSet, output_set
from ..release.finder import ReleasePaths, release_paths
from ..release.hub import option_folder
from ..runtime.pipeline import Generation, ScaleEvent, ScaleLoop
from .common import (
    CfgUntilOpt,
    ClipOpt,
    FastOpt,
    KeepOpt,
    OverwriteOpt,
    ResolutionOpt,
    SamplerOpt,
    StarOpt,
    VaeOpt,
    WeightsOpt,
    check_threads,
    progress_bar,
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


def check_prompts(prompts: list[str], sampling: SamplingConfig) -> None:
    """Refuse seeds that overflow; warn about empty prompts (legal: they generate unconditionally)."""
    last_seed = sampling.seed + len(prompts) - 1
    if last_seed >= 2**63:
        raise ConfigError(
            f"--seed {sampling.seed}: prompt {len(prompts) - 1} would use seed {last_seed} >= 2**63; use a smaller seed"
        )
    for i, prompt in enumerate(prompts):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"prompt {i} is not valid UTF-8 text ({prompt!r}); pass the prompt in UTF-8") from None
        if not prompt.strip():
            log.warning("prompt %d is empty: it generates an unconditional image (cfg has no effect)", i)


def check_artifacts_resolution(backend: str, artifacts: Path | None, resolution: int | None) -> None:
    """Refuse a missing artefact folder, or one of another resolution, before anything loads."""
    if artifacts is None:
        raise ConfigError(
            f"--backend {backend} runs exported graphs: pass --artifacts DIR (made by `star-deploy export`)"
        )
    config = parse_config(read_manifest(artifacts)["config"], artifacts / MANIFEST)
    if resolution is not None and resolution != config.resolution:
        raise ConfigError(
            f"--resolution {resolution}: the artefacts in {artifacts} are for "
            f"{config.resolution} px; drop --resolution or export again"
        )


def weight_options(
    backend: str, release: ReleasePaths | None, clip: Path | None, vae: Path | None, star: Path | None
) -> dict[str, Path | None]:
    """The release parts ``from_pretrained`` takes: for artefacts, the checkpoints they must come from."""
    if needs_artifacts(backend):
        return {} if release is None else {"clip": release.clip, "vae": release.vae, "star": release.star}
    return {"clip": clip, "vae": vae, "star": star}


def chosen_sampling(
    asked: SamplingConfig, defaults: SamplingConfig, given: tuple[float | None, int | None, float | None], vocab: int
) -> SamplingConfig:
    """The options given (cfg, top-k, top-p), the model's defaults for the rest; top-k clamped to the codebook."""
    cfg, top_k, top_p = given
    sampling = replace(
        asked,
        cfg=defaults.cfg if cfg is None else cfg,
        top_k=defaults.top_k if top_k is None else top_k,
        top_p=defaults.top_p if top_p is None else top_p,
    )
    if sampling.top_k > vocab and top_k is not None:
        log.warning("top-k %d exceeds the codebook size; using %d", top_k, vocab)
    return sampling.clamped(vocab)


def run_inputs(backend: str, artifacts: Path | None, weights: Path | None, paths: ReleasePaths | None) -> list[Path]:
    """Every file or folder ``run`` reads: the artefact folder, the release folder and its parts."""
    parts = [p for p in (weights, *((paths.clip, paths.vae, paths.star) if paths else ())) if p is not None]
    return parts + ([artifacts] if artifacts is not None and needs_artifacts(backend) else [])


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


def run(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts; each gives one image.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="PNG file (one prompt) or folder (several). Default star.png / star_images/."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first prompt; prompt i uses seed+i.")] = 0,
    cfg: Annotated[
        float | None,
        typer.Option(
            help="Classifier-free guidance strength (ramps from 0 over the scales). Default: the artefacts' "
            "(recorded at export), else the official 4.0."
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            "--top-k",
            help="Keep the k most likely tokens (0: off). Default: the artefacts', else the official 600; capped at "
            "the codebook size.",
        ),
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option("--top-p", help="Nucleus sampling mass in (0, 1]. Default: the artefacts', else 0.8."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts generated together.")] = 1,
    backend: Annotated[
        str | None,
        typer.Option(
            help="torch, onnxruntime or tensorrt. Default: torch with weight options, else onnxruntime (on "
            "--artifacts, or on the built-in demo's graphs)."
        ),
    ] = None,
    artifacts: Annotated[
        Path | None,
        typer.Option(
            help="Artefact folder from `star-deploy export` (onnxruntime, tensorrt). Default: the built-in demo's "
            "graphs."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda or cuda:N. Default: cuda for tensorrt, else cpu.")
    ] = None,
    dtype: Annotated[str, typer.Option(help="torch backend compute dtype: float32, float16 or bfloat16.")] = "float32",
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads (0: one per physical core).")] = 0,
    provider: Annotated[
        str | None,
        typer.Option(
            help="onnxruntime execution provider: cpu, cuda, tensorrt, openvino, coreml or directml (as installed). "
            "Default: cuda for --device cuda, else cpu."
        ),
    ] = None,
    sampler: SamplerOpt = "portable",
    previews: Annotated[
        Path | None,
        typer.Option(
            "--previews",
            help="Also write the coarse image after every scale into this folder (NNN_prompt_scaleKK.png).",
        ),
    ] = None,
    cuda_graphs: Annotated[
        bool,
        typer.Option(
            "--cuda-graphs",
            help="torch backend on CUDA: capture every scale (step, draw, update) and the decoder as CUDA graphs on "
            "the first batch, replay them for the next (faster from the second batch on).",
        ),
    ] = False,
    compile_step: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch backend: compile the transformer block once with torch.compile (inductor), shared by every "
            "block and scale (two graphs for the whole schedule), on the first batch; combine with --cuda-graphs on "
            "CUDA.",
        ),
    ] = False,
    fast: FastOpt = 0,
    cfg_until: CfgUntilOpt = None,
    keep: KeepOpt = None,
    weights: WeightsOpt = None,
    clip: ClipOpt = None,
    vae: VaeOpt = None,
    star: StarOpt = None,
    resolution: ResolutionOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate images from PROMPTS and write PNGs (prompt, seed and sampler settings embedded).

    With no weight options, the built-in demo model draws the prompt at 128 px (ONNX Runtime on
    its shipped graphs: no PyTorch needed): one circle,
    square or triangle in one of eight colours on a plain background, e.g.
    "a red circle on a blue background" or "white backdrop with a small green square at the top left".
    An empty prompt is legal (STAR's unconditional prompt) and is warned about; prompts over
    77 CLIP tokens are truncated with a warning; --top-k above the codebook size is clamped.
    """
    given = any(v is not None for v in (weights, clip, vae, star))
    backend = backend if backend is not None else ("torch" if given else "onnxruntime")
    if backend == "onnxruntime" and artifacts is None and not given:
        artifacts = DEMO_GRAPHS
    asked = SamplingConfig(
        cfg=SamplingConfig.cfg if cfg is None else cfg,
        top_k=SamplingConfig.top_k if top_k is None else top_k,
        top_p=SamplingConfig.top_p if top_p is None else top_p,
        seed=seed,
        sampler=sampler,
    )
    device = default_device(backend, device)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if not prompts:
        raise ConfigError("give at least one prompt")
    check_prompts(prompts, asked)
    check_threads(threads)
    paths = output_paths(out, prompts)
    check_outputs(paths, overwrite)
    if previews is not None:
        check_previews(previews, overwrite)
    batch = min(batch_size, len(prompts))
    if cuda_graphs and (backend != "torch" or not device.startswith("cuda")):
        raise ConfigError("--cuda-graphs applies to --backend torch with --device cuda")
    if compile_step and backend != "torch":
        raise ConfigError("--compile applies to --backend torch")
    check_provider(provider, backend)
    weights, artifacts = option_folder(weights), option_folder(artifacts)
    release = release_paths(weights, clip, vae, star) if given or not needs_artifacts(backend) else None
    check_separate(
        paths + ([previews] if previews is not None else []), run_inputs(backend, artifacts, weights, release)
    )
    check_backend_device(backend, device)
    if needs_artifacts(backend):
        check_artifacts_resolution(backend, artifacts, resolution)
    pipe = StarPipeline.from_pretrained(
        artifacts if needs_artifacts(backend) else weights,
        backend=backend,
        device=device,
        dtype=dtype,
        resolution=resolution,
        threads=threads,
        cuda_graphs=cuda_graphs,
        compile=compile_step,
        provider=provider,
        **weight_options(backend, release, clip, vae, star),
        max_batch_size=batch,
    )
    pipeline = pipe.loop
    mode = pipe.fast_mode(fast, cfg_until, keep)
    sampling = chosen_sampling(asked, pipe.defaults, (cfg, top_k, top_p), pipeline.config.transformer.vocab_size)
    meta = {
        "cfg": str(sampling.cfg),
        "top_k": str(sampling.top_k),
        "top_p": str(sampling.top_p),
        "sampler": sampler,
        "backend": backend,
        "fast": mode.label(),
        "software": "star-deploy",
    }
    with output_set(previews) as preview_outputs:
        writer = None
        if previews is not None:
            names = preview_paths(previews, prompts, pipeline.config.num_scales)
            if previews.is_dir():
                for path in (p for row in names for p in row):
                    check_writable(path, overwrite)
            metas = [meta | {"prompt": p, "seed": str(seed + i)} for i, p in enumerate(prompts)]
            writer = preview_writer(preview_outputs, names, metas, overwrite)
        results = generate_batches(pipeline, prompts, sampling, batch_size, writer, mode)
        images = [img for r in results for img in r.images]
        save_images(paths, prompts, images, meta, seed, overwrite)
    print_timings(results, len(images), f"{backend}, {device}")


command = reports_errors(run)
