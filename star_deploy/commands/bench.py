"""``star-deploy bench``: every backend against the official-style baseline and the compute floor."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..backends.registry import bench_variants, default_backend
from ..bench import BASELINE, BENCH_BACKENDS
from ..core.call_options import CallOptions
from ..core.config import PRESETS, SamplingConfig, preset
from ..core.extras import require_torch
from ..errors import ConfigError
from ..files.atomic import check_separate, check_writable
from ..runtime.plan import LoadOptions, plan_load
from .common import reports_errors
from .options import takes

if TYPE_CHECKING:
    from ..release.weights import StarTorchModel

log = logging.getLogger("star_deploy")
DEFAULT_BACKENDS = "torch-eager,torch,onnxruntime,onnxruntime-int8"

Backends = Annotated[str, typer.Option(help=f"Comma-separated, from: {', '.join(BENCH_BACKENDS)}.")]
RandomWeights = Annotated[
    bool, typer.Option("--random-weights", help="Benchmark a random-weight model of --preset's shape.")
]
Preset = Annotated[str, typer.Option("--preset", help=f"Shape for --random-weights: {', '.join(PRESETS)}.")]
Artifacts = Annotated[
    Path | None,
    typer.Option(help="fp32 artefact folder for onnxruntime (default: export the model to a temporary folder)."),
]
Int8Artifacts = Annotated[
    Path | None,
    typer.Option("--int8-artifacts", help="int8 folder from `star-deploy quantize` (default: quantize --artifacts)."),
]
Warmup = Annotated[int, typer.Option(help="Untimed generations per backend (the first is the fidelity run).")]
Repeat = Annotated[int, typer.Option(help="Timed generations per backend.")]
Json = Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON to this file.")]


def reference_model(random_weights: bool, preset_name: str, load: LoadOptions, need: bool) -> StarTorchModel | None:
    """The model the torch lines run (and onnxruntime lines export): random, a release, or none."""
    if random_weights:
        if load.weight_options:
            raise ConfigError("--random-weights and --weights/--clip/--vae/--star exclude each other")
        from ..release.random_weights import random_model

        log.info("building a random-weight %s model", preset_name)
        return random_model(preset(preset_name), seed=0)
    if not (need or load.weight_options):
        return None
    from ..release.weights import load_release

    plan = plan_load(replace(load, backend=default_backend(artifacts=False).name))
    return load_release(plan.release, plan.resolution)


def needs_model(names: tuple[str, ...], artifacts: Path | None) -> bool:
    """Whether a line runs the PyTorch model, or onnxruntime needs it exported."""
    weights_lines = {name for name, (spec, _) in bench_variants().items() if not spec.needs_artifacts} | {BASELINE}
    return artifacts is None or any(name in weights_lines for name in names)


def run_benchmark(
    backends: str,
    random_weights: bool,
    preset_name: str,
    artifacts: Path | None,
    int8_artifacts: Path | None,
    warmup: int,
    repeat: int,
    json_path: Path | None,
    load: LoadOptions,
    call: CallOptions,
) -> None:
    """Time the lines, print the tables, write the JSON."""
    require_torch("star-deploy bench")
    from ..bench.report import print_report, write_json
    from ..bench.runner import BackendSource, BenchSettings, run_bench

    names = tuple(b.strip() for b in backends.split(",") if b.strip())
    sampling = call.sampling(SamplingConfig())
    settings = BenchSettings(names, call.batch_size or 1, warmup, repeat, sampling.seed, sampling, load, call)
    if json_path is not None:
        check_writable(json_path, overwrite=True)
    model = reference_model(random_weights, preset_name, load, needs_model(names, artifacts))
    if json_path is not None:
        inputs = [p for p in (artifacts, int8_artifacts) if p is not None] + list(model.inputs if model else ())
        check_separate([json_path], inputs, "--json")
    source = BackendSource(model, artifacts, int8_artifacts, settings)
    try:
        report = run_bench(source, settings)
    finally:
        source.close()
    print_report(report)
    if json_path is not None:
        write_json(report, json_path)
        typer.echo(str(json_path))


@takes(CallOptions, "call")
@takes(LoadOptions, "load", exclude=("backend", "artifacts", "cuda_graphs", "compile", "provider"))
def bench(
    backends: Backends = DEFAULT_BACKENDS,
    random_weights: RandomWeights = False,
    preset_name: Preset = "256-d16",
    artifacts: Artifacts = None,
    int8_artifacts: Int8Artifacts = None,
    warmup: Warmup = 1,
    repeat: Repeat = 3,
    json_path: Json = None,
    *,
    load: LoadOptions,
    call: CallOptions,
) -> None:
    """Time the backends on the same prompts and seeds; print a table and the per-stage breakdown.

    With no weight options and no --random-weights, benchmarks the built-in demo model.
    --fast runs that rung on every backend but the official-style baseline, which stays exact.
    """
    run_benchmark(
        backends, random_weights, preset_name, artifacts, int8_artifacts, warmup, repeat, json_path, load, call
    )


command = reports_errors(bench)
