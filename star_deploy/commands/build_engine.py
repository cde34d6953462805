"""``star-deploy build-engine``: FP16 TensorRT plans for every graph of an artefact folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from ..artifacts.manifest import load_manifest
from ..core.call_options import CallOptions
from .common import ArtifactsAlias, OverwriteOpt, artifacts_folder, progress_bar, reports_errors
from .options import takes

log = logging.getLogger("star_deploy")


@takes(CallOptions, "fast_knobs", only=("fast", "cfg_until", "keep"))
def build_engine(
    artifacts: Annotated[
        Path | None, typer.Argument(help="Artefact folder from `star-deploy export` (fp16 for FP16 engines).")
    ] = None,
    batch_size: Annotated[
        list[int], typer.Option("--batch-size", "-b", help="Batch size to build profiles for; repeat for several.")
    ] = [1],  # noqa: B006
    workspace: Annotated[float, typer.Option(help="Builder workspace limit in GiB.")] = 8.0,
    opt_level: Annotated[
        int, typer.Option("--opt-level", help="Builder optimization level 0..5 (higher: slower build, faster engine).")
    ] = 3,
    typing_mode: Annotated[
        str,
        typer.Option(
            "--typing",
            help="strong: precision from the ONNX types (TensorRT 10.12+/11); fp16-flag: weakly typed FP16 builder "
            "flag (TensorRT 10 only).",
        ),
    ] = "strong",
    timing_cache: Annotated[
        Path | None,
        typer.Option(
            help="Timing cache file to reuse and update (one made on another GPU is replaced by a fresh one). "
            "Default: DIR/engines/timing-<GPU>-trt<version>.cache."
        ),
    ] = None,
    tf32: Annotated[
        bool,
        typer.Option(
            "--tf32/--no-tf32",
            help="Let FP32 layers (all of an fp32 export, the logits head of an fp16 one) use TF32: faster, "
            "about 1e-3 relative error. Recorded in each sidecar. Default: off.",
        ),
    ] = False,
    conditional_rows: Annotated[
        bool,
        typer.Option(
            "--conditional-rows",
            help="Also build step profiles for the conditional rows alone, so the engines run --fast 1 "
            "(guidance stops after a scale). Doubles the step engine's profiles.",
        ),
    ] = False,
    graph: Annotated[
        list[str] | None,
        typer.Option(
            "--graph",
            help="Build only this graph; repeat for several. Default: all five, and transformer_step_pruned "
            "for --fast 2.",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="CUDA device to build on (cuda or cuda:N).")] = "cuda",
    artifacts_option: ArtifactsAlias = None,
    overwrite: OverwriteOpt = False,
    fast_knobs: CallOptions | None = None,
) -> None:
    """Build one TensorRT engine per graph into DIR/engines/<graph>.plan, each with a .json sidecar.

    The transformer step and scale update get one optimization profile per scale and batch
    size (exact shapes). --fast 1 adds the step's profiles for the conditional rows (as
    --conditional-rows); --fast 2 (--cfg-until, --keep) also builds the pruned step, one profile
    per scale that mode prunes, for runs with the same knobs. Needs TensorRT: pip install
    'star-deploy\\[tensorrt-cu12]' (tensorrt-cu13 for a CUDA 13 torch).
    """
    folder = artifacts_folder(artifacts, artifacts_option)
    from ..engines.builder import BuildOptions, build_engines, default_graphs

    manifest = load_manifest(folder)
    mode = (fast_knobs or CallOptions()).fast_mode(manifest.config)
    fast = None if mode.exact else mode
    options = BuildOptions(
        tuple(batch_size), workspace, opt_level, typing_mode, timing_cache, tf32, conditional_rows, fast
    )
    graphs = graph or default_graphs(manifest, options)
    with progress_bar() as progress:
        task = progress.add_task("building engines", total=len(graphs))
        paths = build_engines(manifest, options, graphs, device, overwrite, on_graph=lambda g: progress.advance(task))
    for path in paths:
        typer.echo(str(path))


command = reports_errors(build_engine)
