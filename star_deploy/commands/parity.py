"""``star-deploy parity``: measure an artefact folder against the PyTorch fp32 reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..artifacts.manifest import Manifest
from ..artifacts.sources import check_sources
from ..backends.factory import artifacts_manifest, create_backend, default_device
from ..core.config import SamplingConfig
from ..core.tokenizer import PromptTokenizer
from ..errors import ConfigError
from ..evaluation.graph_records import RecordsRequest, run_records
from ..evaluation.parity import THRESHOLDS, ErrorStats, Fidelity, failures, fidelity, graph_parity
from ..files.atomic import check_writable, write_text
from ..release.finder import release_paths
from ..runtime.pipeline import ScaleLoop
from .common import ClipOpt, ResolutionOpt, StarOpt, VaeOpt, WeightsOpt, reports_errors

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


def measured_prompts(manifest: Manifest, backend: str, given: list[str] | None) -> list[str]:
    """The prompts to compare on; TensorRT engines take only the batch sizes they were built for."""
    if backend != "tensorrt":
        return list(given) if given else list(DEFAULT_PROMPTS)
    from ..engines.sidecar import prompts_for

    return prompts_for(manifest.root, list(manifest.graphs), given, list(DEFAULT_PROMPTS))


def parity(
    artifacts: Annotated[Path, typer.Option(help="Artefact folder from `star-deploy export` to measure.")],
    backend: Annotated[str, typer.Option(help="Runtime for the artefacts: onnxruntime or tensorrt.")] = "onnxruntime",
    device: Annotated[
        str | None,
        typer.Option(help="Device of the measured backend: cpu or cuda (default: cuda for tensorrt, else cpu)."),
    ] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt",
            help="Prompt to compare on (repeatable). Default: 4 built-in prompts (tensorrt: as many as the "
            "smallest batch size the engines are built for).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first prompt.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON.")] = None,
    weights: WeightsOpt = None,
    clip: ClipOpt = None,
    vae: VaeOpt = None,
    star: StarOpt = None,
    resolution: ResolutionOpt = None,
    save_outputs: Annotated[
        Path | None,
        typer.Option(
            help="Record every graph's outputs on ONNX Runtime (CPU) as Polygraphy RunResults: REF.<graph>.json."
        ),
    ] = None,
    save_inputs: Annotated[
        Path | None, typer.Option(help="Where the recorded inputs go (Polygraphy input JSON; default REF.inputs.json).")
    ] = None,
    load_outputs: Annotated[
        Path | None,
        typer.Option(help="Replay recorded inputs through the engines and compare with these outputs (Polygraphy)."),
    ] = None,
    load_inputs: Annotated[Path | None, typer.Option(help="The recorded inputs (default REF.inputs.json).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing --save-outputs/--save-inputs files.")] = False,
) -> None:
    """Compare exported graphs with the PyTorch fp32 reference of the same weights.

    Prints per-graph max/mean errors (same inputs into both), teacher-forced token agreement,
    and image PSNR; exits 1 if the artefacts' precision misses its thresholds. With --save-outputs or
    --load-outputs: record graph I/O on one machine, compare engines with it on another (no weights needed).
    """
    if save_outputs is not None or load_outputs is not None:
        records = RecordsRequest(save_outputs, save_inputs, load_outputs, load_inputs, overwrite)
        failure = run_records(artifacts, backend, device, list(prompt or DEFAULT_PROMPTS[:1]), records, typer.echo)
        if failure:
            typer.secho(f"FAIL: {failure}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1)
        return
    if json_out is not None:
        check_writable(json_out, overwrite=True)
    manifest = artifacts_manifest(artifacts, backend)
    check_sources(
        manifest,
        release_paths(weights, clip, vae, star),
        "pass the weights it was exported from (--weights or --star/--vae/--clip)",
    )
    from ..release.weights import load_model

    model = load_model(weights, clip, vae, star, resolution)
    if model.config != manifest.config:
        raise ConfigError(
            f"{artifacts} was exported from a model of another shape than the weights given; pass the same weights"
        )
    tokenizer = PromptTokenizer(manifest.tokenizer_dir)
    prompts = measured_prompts(manifest, backend, prompt)
    reference = create_backend("torch", "cpu", model=model)
    tested = create_backend(backend, default_device(backend, device), manifest=manifest)
    graphs = graph_parity(reference, tested, tokenizer, prompts, seed)
    seeds = [seed + i for i in range(len(prompts))]
    result = fidelity(
        ScaleLoop(reference, tokenizer), ScaleLoop(tested, tokenizer), prompts, SamplingConfig(seed=seed), seeds
    )
    print_report(graphs, result, f"{backend} {manifest.precision} vs torch fp32 ({artifacts})")
    limits = THRESHOLDS[manifest.precision]
    failed = failures(result, limits)
    if json_out is not None:
        report = {
            "precision": manifest.precision,
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
    typer.echo(f"PASS ({manifest.precision} thresholds: {vars(limits)})")


command = reports_errors(parity)
