"""``star-deploy parity``: measure an artefact folder against the PyTorch fp32 reference."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..artifacts.manifest import Manifest, load_manifest
from ..artifacts.sources import check_sources
from ..backends.registry import BackendSpec, default_backend, engine_backends
from ..core.config import SamplingConfig
from ..core.tokenizer import PromptTokenizer
from ..errors import ConfigError
from ..evaluation.graph_records import (
    RecordsRequest,
    compare_records,
    engine_replay,
    inputs_stem,
    load_records,
    record_generation,
    save_records,
)
from ..evaluation.parity import THRESHOLDS, ErrorStats, Fidelity, failures, fidelity, graph_parity
from ..files.atomic import check_separate, check_writable, write_text
from ..release.finder import release_paths
from ..runtime.loading import reference_backend
from ..runtime.pipeline import ScaleLoop
from ..runtime.plan import LoadOptions, LoadPlan, plan_load
from .common import reports_errors
from .options import takes

if TYPE_CHECKING:
    from ..release.weights import StarTorchModel

DEFAULT_PROMPTS = (
    "a red circle on a blue background",
    "a small green triangle in the top left on a white background",
    "a cute dog sitting on the grass, high quality",
    "",
)


def print_report(graphs: dict[str, ErrorStats], result: Fidelity, title: str) -> None:
    console = Console()
    table = Table(title=title)
    for col in ("graph", "max |err|", "mean |err|"):
        table.add_column(col, justify="right" if col != "graph" else "left")
    for name, s in graphs.items():
        table.add_row(name, f"{s.max_abs:.3g}", f"{s.mean_abs:.3g}")
    console.print(table)
    summary = Table(show_header=False)
    summary.add_row("teacher-forced token agreement", f"{result.teacher_forced_token_agreement:.4f}")
    summary.add_row("teacher-forced image PSNR", f"{result.teacher_forced_psnr_db:.1f} dB")
    summary.add_row("free-running token agreement", f"{result.free_run_token_agreement:.4f}")
    summary.add_row("free-running image PSNR", f"{result.free_run_psnr_db:.1f} dB")
    summary.add_row("raw logits max |err|", f"{result.logits_max_abs:.3g}")
    console.print(summary)


def measured_prompts(manifest: Manifest, spec: BackendSpec, given: list[str] | None) -> list[str]:
    """The prompts to compare on; engines take only the batch sizes they were built for."""
    if not spec.engines:
        return list(given) if given else list(DEFAULT_PROMPTS)
    from ..engines.sidecar import prompts_for

    return prompts_for(manifest.root, list(manifest.graphs), given, list(DEFAULT_PROMPTS))


def graphs_plan(load: LoadOptions) -> tuple[LoadPlan, Manifest]:
    """The checked plan of a backend that runs exported graphs (ONNX Runtime unless --backend), and its manifest."""
    plan = plan_load(replace(load, backend=load.backend or default_backend(artifacts=True).name))
    if not plan.spec.needs_artifacts:
        raise ConfigError(f"--backend {plan.backend}: parity measures a backend that runs exported graphs")
    return plan, load_manifest(plan.artifacts)


def reference_and_tested(load: LoadOptions) -> tuple[StarTorchModel, Manifest, LoadPlan]:
    """The PyTorch fp32 reference and the checked plan of the exported graphs, made from the same weights."""
    from ..release.weights import load_release

    plan, manifest = graphs_plan(load)
    release = plan.release or release_paths(None, None, None, None)
    check_sources(manifest, release, "pass the weights it was exported from (--weights or --star/--vae/--clip)")
    model = load_release(release, plan.resolution)
    if model.config != manifest.config:
        raise ConfigError(
            f"{plan.artifacts} was exported from a model of another shape than the weights given; pass the same weights"
        )
    return model, manifest, plan


def measure(load: LoadOptions, prompt: list[str] | None, seed: int, json_out: Path | None) -> None:
    """Per-graph errors and fidelity of the plan's backend against the reference; exit 1 below the thresholds."""
    if json_out is not None:
        check_writable(json_out, overwrite=True)
    model, manifest, plan = reference_and_tested(load)
    if json_out is not None:
        check_separate([json_out], [*plan.inputs, *model.inputs], "--json")
    tokenizer = PromptTokenizer(manifest.tokenizer_dir)
    prompts = measured_prompts(manifest, plan.spec, prompt)
    reference = reference_backend(model)
    tested = plan.spec.create(manifest, plan.device, plan.options)
    graphs = graph_parity(reference, tested, tokenizer, prompts, seed)
    seeds = [seed + i for i in range(len(prompts))]
    result = fidelity(
        ScaleLoop(reference, tokenizer), ScaleLoop(tested, tokenizer), prompts, SamplingConfig(seed=seed), seeds
    )
    print_report(graphs, result, f"{plan.backend} {manifest.precision} vs torch fp32 ({plan.artifacts})")
    report_verdict(manifest.precision, plan.backend, graphs, result, json_out)


def report_verdict(
    precision: str, backend: str, graphs: dict[str, ErrorStats], result: Fidelity, json_out: Path | None
) -> None:
    """PASS, or FAIL with exit 1 below the precision's thresholds; the JSON report when asked for."""
    limits = THRESHOLDS[precision]
    failed = failures(result, limits)
    if json_out is not None:
        report = {
            "precision": precision,
            "backend": backend,
            "graphs": {k: vars(v) for k, v in graphs.items()},
            "fidelity": result.to_dict(),
            "thresholds": vars(limits),
            "failures": failed,
        }
        write_text(json_out, json.dumps(report, indent=2) + "\n", overwrite=True)
    if failed:
        typer.secho("FAIL: " + "; ".join(failed), err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.echo(f"PASS ({precision} thresholds: {vars(limits)})")


def record(load: LoadOptions, prompts: list[str], request: RecordsRequest) -> None:
    """Every graph's I/O along one generation on ONNX Runtime (CPU), written as Polygraphy data."""
    plan, manifest = graphs_plan(load)
    if plan.spec is not default_backend(artifacts=True):
        raise ConfigError(f"--save-outputs records on {default_backend(artifacts=True).name} (CPU): drop --backend")
    inputs = request.save_inputs or inputs_stem(request.save_outputs)
    written = save_records(record_generation(manifest, prompts), request.save_outputs, inputs, request.overwrite)
    typer.echo(f"recorded {len(written) // 2} graphs: {', '.join(str(p) for p in written)}")


def compare_recorded(load: LoadOptions, request: RecordsRequest) -> None:
    """Replay recorded inputs through the engines; exit 1 naming the first graph, scale and output outside."""
    plan, manifest = graphs_plan(load)
    if not plan.spec.engines:
        names = " or ".join(s.name for s in engine_backends())
        raise ConfigError(f"--load-outputs compares built engines: pass --backend {names}")
    recorded = load_records(request.load_outputs, request.load_inputs or inputs_stem(request.load_outputs), manifest)
    atol = THRESHOLDS[manifest.precision].logits_max_abs
    engines = plan.spec.create(manifest, plan.device, plan.options)
    compared, mismatch = compare_records(recorded, engine_replay(engines), atol, plan.backend)
    if mismatch is not None:
        typer.secho(
            f"FAIL: {mismatch} (tolerance {atol:g}, {manifest.precision} thresholds)", err=True, fg=typer.colors.RED
        )
        raise typer.Exit(1)
    typer.echo(f"PASS: {compared} outputs of {len(recorded.calls)} graph calls within {atol:g} ({manifest.precision})")


Prompt = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt",
        help="Prompt to compare on (repeatable). Default: 4 built-in prompts (tensorrt: as many as the smallest batch "
        "size the engines are built for).",
    ),
]
Seed = Annotated[int, typer.Option(help="Seed of the first prompt.")]
Json = Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON.")]
SaveOutputs = Annotated[
    Path | None,
    typer.Option(help="Record every graph's outputs on ONNX Runtime (CPU) as Polygraphy RunResults: REF.<graph>.json."),
]
SaveInputs = Annotated[
    Path | None, typer.Option(help="Where the recorded inputs go (Polygraphy input JSON; default REF.inputs.json).")
]
LoadOutputs = Annotated[
    Path | None,
    typer.Option(help="Replay recorded inputs through the engines and compare with these outputs (Polygraphy)."),
]
LoadInputs = Annotated[Path | None, typer.Option(help="The recorded inputs (default REF.inputs.json).")]
Overwrite = Annotated[bool, typer.Option(help="Replace existing --save-outputs/--save-inputs files.")]


@takes(LoadOptions, "load", only=("backend", "artifacts", "device", "weights", "clip", "vae", "star", "resolution"))
def parity(
    prompt: Prompt = None,
    seed: Seed = 0,
    json_out: Json = None,
    save_outputs: SaveOutputs = None,
    save_inputs: SaveInputs = None,
    load_outputs: LoadOutputs = None,
    load_inputs: LoadInputs = None,
    overwrite: Overwrite = False,
    *,
    load: LoadOptions,
) -> None:
    """Compare exported graphs with the PyTorch fp32 reference of the same weights.

    Prints per-graph max/mean errors (same inputs into both), teacher-forced token agreement,
    and image PSNR; exits 1 if the artefacts' precision misses its thresholds. With no
    --artifacts and no weight options, measures the built-in demo's graphs. With --save-outputs or
    --load-outputs: record graph I/O on one machine, compare engines with it on another (no weights needed).
    """
    request = RecordsRequest(save_outputs, save_inputs, load_outputs, load_inputs, overwrite)
    if request.save_outputs is not None:
        record(load, list(prompt or DEFAULT_PROMPTS[:1]), request)
    elif request.load_outputs is not None:
        compare_recorded(load, request)
    else:
        measure(load, prompt, seed, json_out)


command = reports_errors(parity)
