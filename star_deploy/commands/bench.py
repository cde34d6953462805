"""``star-deploy bench``: every backend against the official-style baseline and the compute floor."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..backends.factory import check_device
from ..bench import BENCH_BACKENDS
from ..core.config import PRESETS, SamplingConfig, preset
from ..core.extras import require_torch
from ..errors import ConfigError
from ..files.atomic import check_writable
from .common import (
    CfgUntilOpt,
    ClipOpt,
    FastOpt,
    ResolutionOpt,
    SamplerOpt,
    StarOpt,
    VaeOpt,
    WeightsOpt,
    check_threads,
    reports_errors,
)

if TYPE_CHECKING:
    from ..release.weights import StarTorchModel

log = logging.getLogger("star_deploy")
DEFAULT_BACKENDS = "torch-eager,torch,onnxruntime,onnxruntime-int8"


def bench_model(
    random_weights: bool, preset_name: str, weights, clip, vae, star, resolution, need: bool
) -> StarTorchModel | None:
    """The model the torch backends run (and onnxruntime exports): random, a release, or none."""
    if random_weights:
        from ..release.random_weights import random_model

        log.info("building a random-weight %s model", preset_name)
        return random_model(preset(preset_name), seed=0)
    if need or any(v is not None for v in (weights, clip, vae, star)):
        from ..release.weights import load_model

        return load_model(weights, clip, vae, star, resolution)
    return None


def bench(
    backends: Annotated[
        str, typer.Option(help=f"Comma-separated, from: {', '.join(BENCH_BACKENDS)}.")
    ] = DEFAULT_BACKENDS,
    random_weights: Annotated[
        bool, typer.Option("--random-weights", help="Benchmark a random-weight model of --preset's shape.")
    ] = False,
    preset_name: Annotated[
        str, typer.Option("--preset", help=f"Shape for --random-weights: {', '.join(PRESETS)}.")
    ] = "256-d16",
    artifacts: Annotated[
        Path | None,
        typer.Option(help="fp32 artefact folder for onnxruntime (default: export the model to a temporary folder)."),
    ] = None,
    int8_artifacts: Annotated[
        Path | None,
        typer.Option(
            "--int8-artifacts", help="int8 folder from `star-deploy quantize` (default: quantize --artifacts)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per generation.")] = 1,
    warmup: Annotated[int, typer.Option(help="Untimed generations per backend (the first is the fidelity run).")] = 1,
    repeat: Annotated[int, typer.Option(help="Timed generations per backend.")] = 3,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="torch backend compute dtype: float32, float16 or bfloat16.")] = "float32",
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads (0: one per physical core).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the first prompt; prompt i uses seed+i.")] = 0,
    sampler: SamplerOpt = "portable",
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON to this file.")
    ] = None,
    compile_cache: Annotated[
        Path | None,
        typer.Option(help="Folder keeping torch-compiled* backends' compiled artefacts between runs (created)."),
    ] = None,
    weights: WeightsOpt = None,
    clip: ClipOpt = None,
    vae: VaeOpt = None,
    star: StarOpt = None,
    resolution: ResolutionOpt = None,
    fast: FastOpt = 0,
    cfg_until: CfgUntilOpt = None,
) -> None:
    """Time the backends on the same prompts and seeds; print a table and the per-stage breakdown.

    With no weight options and no --random-weights, benchmarks the built-in demo model.
    --fast runs that rung on every backend but the official-style baseline, which stays exact.
    """
    names = tuple(b.strip() for b in backends.split(",") if b.strip())
    require_torch("star-deploy bench")
    from ..bench.report import print_report, write_json
    from ..bench.runner import BackendSource, BenchSettings, run_bench
    from ..core.fast import check_level

    check_threads(threads)
    check_device(device)
    check_level(fast)
    settings = BenchSettings(
        names,
        batch_size,
        warmup,
        repeat,
        device,
        dtype,
        threads,
        seed,
        SamplingConfig(seed=seed, sampler=sampler),
        compile_cache=compile_cache,
        fast=fast,
        cfg_until=cfg_until,
    )
    if json_path is not None:
        check_writable(json_path, overwrite=True)
    needs_model = any(n.startswith("torch") for n in names) or artifacts is None
    if random_weights and (weights or clip or vae or star):
        raise ConfigError("--random-weights and --weights/--clip/--vae/--star exclude each other")
    model = bench_model(random_weights, preset_name, weights, clip, vae, star, resolution, needs_model)
    source = BackendSource(model, artifacts, int8_artifacts, settings)
    try:
        report = run_bench(source, settings)
    finally:
        source.close()
    print_report(report)
    if json_path is not None:
        write_json(report, json_path)
        typer.echo(str(json_path))


command = reports_errors(bench)
