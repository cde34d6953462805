"""``star-deploy export``: an official release -> a self-describing ONNX artefact folder."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..core.config import StarConfig
from ..core.graphs import EXPORT_PRECISIONS, GRAPH_NAMES, OPTIONAL_GRAPHS
from ..errors import ConfigError
from ..evaluation.parity import THRESHOLDS, TeacherForced, failures, teacher_forced
from ..files.atomic import check_separate, check_writable
from ..release.finder import release_paths
from ..release.hub import option_folder
from ..runtime.memory import available_bytes, check_fits, estimate
from .common import (
    ClipOpt,
    OverwriteOpt,
    ResolutionOpt,
    StarOpt,
    VaeOpt,
    WeightsOpt,
    progress_bar,
    reports_errors,
)

if TYPE_CHECKING:
    from ..release.weights import StarTorchModel

log = logging.getLogger("star_deploy")

VALIDATION_PROMPTS = ("a red circle on a blue background",)
"""What ``export`` checks the written graphs on (seed 0; CFG runs its unconditional row beside it)."""


def export_memory_check(config: StarConfig) -> None:
    """Export traces in fp32 on the CPU at batch 1 and holds about two copies of the weights."""
    need = estimate(config, batch=1, dtype="float32", device="cpu")
    need = replace(need, weights=2 * need.weights)
    check_fits(need, available_bytes("cpu"), "cpu", f"exporting the {config.resolution} px model")


def check_export(model: StarTorchModel, folder: Path) -> tuple[TeacherForced, list[str]]:
    """Teacher-forced parity of ``folder``'s graphs (ONNX Runtime, CPU) against ``model`` (torch, fp32).

    Returns the measures and every threshold of the folder's precision they miss.
    """
    from ..artifacts.manifest import load_manifest
    from ..core.tokenizer import PromptTokenizer
    from ..runtime.loading import graphs_backend, reference_backend
    from ..runtime.pipeline import ScaleLoop

    manifest = load_manifest(folder)
    tokenizer = PromptTokenizer(manifest.tokenizer_dir)
    reference = ScaleLoop(reference_backend(model), tokenizer)
    tested = ScaleLoop(graphs_backend(manifest), tokenizer)
    seeds = list(range(len(VALIDATION_PROMPTS)))
    result = teacher_forced(reference, tested, VALIDATION_PROMPTS, manifest.sampling, seeds)
    return result, failures(result, THRESHOLDS[manifest.precision])


def report_check(model: StarTorchModel, folder: Path, precision: str) -> None:
    """Check the export and say how it went (-q: only a failure; exit 1 when a threshold is missed, folder kept)."""
    result, failed = check_export(model, folder)
    if failed:
        typer.secho(
            f"FAIL: {folder} misses the {precision} thresholds against the source ({'; '.join(failed)}); the folder "
            f"is kept, measure it with `star-deploy parity`",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(1)
    if log.isEnabledFor(logging.INFO):
        typer.echo(f"validated against the source weights: {result.summary()} (PASS, {precision} thresholds)", err=True)


def export(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Artefact folder to create (graphs, tokenizer, manifest.json).")
    ],
    precision: Annotated[
        str, typer.Option(help="fp32, or fp16 (strongly typed: norms, softmax, RoPE and logits head stay fp32).")
    ] = "fp32",
    weights: WeightsOpt = None,
    clip: ClipOpt = None,
    vae: VaeOpt = None,
    star: StarOpt = None,
    resolution: ResolutionOpt = None,
    overwrite: OverwriteOpt = False,
    validate: Annotated[
        bool,
        typer.Option(
            "--validate/--no-validate",
            help="Check the written graphs against the source weights (a short teacher-forced parity on ONNX "
            "Runtime, CPU) and report it; exit 1 if the precision's thresholds are missed.",
        ),
    ] = True,
) -> None:
    """Export a STAR release to ONNX graphs and a manifest.json that describes them, then validate them.

    Graphs: text_encoder, text_context, transformer_step, scale_update, vq_decoder, and
    transformer_step_pruned (for --fast 2).
    With no weight options, exports the built-in demo model.

    The folder appears only when complete: an interrupted export leaves nothing behind.
    """
    from ..export.artifacts import export_artifacts
    from ..release.weights import load_model

    if precision not in EXPORT_PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(EXPORT_PRECISIONS)}, got {precision!r}")
    check_writable(out, overwrite)
    weights = option_folder(weights)
    paths = release_paths(weights, clip, vae, star)
    check_separate([out], paths.inputs)
    model = load_model(weights, clip, vae, star, resolution, export_memory_check)
    with progress_bar() as progress:
        task = progress.add_task("exporting", total=len(GRAPH_NAMES + OPTIONAL_GRAPHS))
        export_artifacts(model, out, precision, overwrite, on_graph=lambda name: progress.advance(task))
    typer.echo(str(out))
    if validate:
        report_check(model, out, precision)


command = reports_errors(export)
