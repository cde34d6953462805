"""``star-deploy export``: an official release -> a self-describing ONNX artefact folder."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ..atomic import check_separate, check_writable
from ..config import StarConfig
from ..errors import ConfigError
from ..graphs import EXPORT_PRECISIONS, GRAPH_NAMES
from ..memory import available_bytes, check_fits, estimate
from ..release import load_model, release_paths
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

log = logging.getLogger("star_deploy")


def export_memory_check(config: StarConfig) -> None:
    """Export traces in fp32 on the CPU at batch 1 and holds about two copies of the weights."""
    need = estimate(config, batch=1, dtype="float32", device="cpu")
    need = replace(need, weights=2 * need.weights)
    check_fits(need, available_bytes("cpu"), "cpu", f"exporting the {config.resolution} px model")


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
) -> None:
    """Export a STAR release to ONNX graphs and a manifest.json that describes them.

    Graphs: text_encoder, text_context, transformer_step, scale_update, vq_decoder.
    With no weight options, exports the built-in demo model.

    The folder appears only when complete: an interrupted export leaves nothing behind.
    """
    from ..export.artifacts import export_artifacts

    if precision not in EXPORT_PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(EXPORT_PRECISIONS)}, got {precision!r}")
    check_writable(out, overwrite)
    paths = release_paths(weights, clip, vae, star)
    check_separate([out], [p for p in (weights, paths.clip, paths.vae, paths.star) if p is not None])
    model = load_model(weights, clip, vae, star, resolution, export_memory_check)
    with progress_bar() as progress:
        task = progress.add_task("exporting", total=len(GRAPH_NAMES))
        export_artifacts(model, out, precision, overwrite, on_graph=lambda name: progress.advance(task))
    typer.echo(str(out))


command = reports_errors(export)
