"""``star-deploy check``: TensorRT readiness of an artefact folder; with --backend tensorrt, GPU validation."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from ..artifacts.manifest import Manifest, load_manifest
from ..backends.registry import BackendSpec, backend_spec, default_backend, engine_backends
from ..core.config import SamplingConfig
from ..core.tokenizer import PromptTokenizer
from ..engines.memory import device_memory, reported_batch_sizes
from ..errors import ArtifactError, ConfigError, StarDeployError
from ..evaluation.parity import ValidationReport, validate
from ..files.atomic import check_writable, write_text
from ..runtime.pipeline import ScaleLoop
from ..runtime.plan import LoadOptions, chosen_device
from .common import ArtifactsAlias, artifacts_folder, reports_errors

log = logging.getLogger("star_deploy")
DEFAULT_PROMPTS = ["a red car on a street", "a cute dog sitting on the grass, high quality"]


def report_readiness(manifest: Manifest) -> None:
    """Print one line per graph TensorRT builds (the fast modes' pruned step too, where exported); raise with the
    first problem if any graph is not ready."""
    from ..artifacts.readiness import check_artifacts, release_tables

    tables = release_tables()
    graphs = manifest.graphs
    reports = check_artifacts(graphs, {g: manifest.path(g) for g in graphs}, tables)
    typer.echo(
        f"TensorRT readiness (ONNX parsers of TensorRT {', '.join(t.tensorrt_version for t in tables)}, opset "
        f"{tables[-1].opset_min}..{tables[-1].opset_max}):"
    )
    for r in reports:
        status = "ok" if r.ok else f"{len(r.problems)} problem(s)"
        typer.echo(f"  {r.graph:<23} {sum(r.op_counts.values()):>5} nodes, {len(r.op_counts):>3} op types  {status}")
        for problem in r.problems:
            typer.echo(f"    - {problem}", err=True)
    problems = [p for r in reports for p in r.problems]
    if problems:
        raise ArtifactError(
            f"{manifest.root}: not ready for TensorRT ({len(problems)} problem(s)); first: {problems[0]}"
        )


def report_memory(manifest: Manifest, batch_sizes: list[int]) -> None:
    for memory in device_memory(manifest, batch_sizes):
        typer.echo(memory.line())


def print_validation(report: ValidationReport) -> None:
    typer.echo("per-graph parity vs reference (max abs / max rel error):")
    for graph, p in report.parity.items():
        typer.echo(f"  {graph:<23} {p.max_abs:10.3e} {p.max_rel:10.3e}")
    per_scale = " ".join(f"{a:.3f}" for a in report.token_agreement)
    typer.echo(f"teacher-forced token agreement: mean {report.mean_token_agreement:.4f}  per scale: {per_scale}")
    typer.echo(
        f"image PSNR vs reference: teacher-forced {report.teacher_psnr:.2f} dB, "
        f"free-running {report.sampled_psnr:.2f} dB (sampled tokens equal: {report.sampled_token_match:.4f})"
    )
    for who, times in report.timings.items():
        stages = "  ".join(f"{k} {v * 1000:.1f} ms" for k, v in times.items())
        typer.echo(f"timings ({who}): {stages}")


def engine_backend(name: str) -> BackendSpec:
    """The backend whose built engines ``check --backend`` validates."""
    spec = backend_spec(name)
    if not spec.engines:
        names = ", ".join(s.name for s in engine_backends())
        raise ConfigError(f"--backend {name}: check validates built engines only ({names})")
    return spec


def validation_pipelines(
    artifacts: Path, manifest: Manifest, reference: Path | None, spec: BackendSpec, devices: tuple[str, str]
) -> tuple[ScaleLoop, ScaleLoop]:
    """The reference (ONNX Runtime on ``reference``, else on DIR) and the engines, each on its device."""
    (device, reference_device), ref_spec = devices, default_backend(artifacts=True)
    options, ref_options = LoadOptions(device=device), LoadOptions(device=reference_device)
    spec.check(device, options)
    ref_manifest = load_manifest(reference) if reference else manifest
    if ref_manifest.config != manifest.config:
        raise ConfigError(f"--reference {reference}: exported from a different model configuration than {artifacts}")
    tokenizer = PromptTokenizer(manifest.tokenizer_dir)
    test = ScaleLoop(spec.create(manifest, device, options), tokenizer)
    ref = ScaleLoop(ref_spec.create(ref_manifest, reference_device, ref_options), tokenizer)
    return ref, test


def check_thresholds(report: ValidationReport, min_agreement: float, min_psnr: float) -> None:
    if report.mean_token_agreement < min_agreement:
        raise StarDeployError(f"teacher-forced token agreement {report.mean_token_agreement:.4f} < {min_agreement}")
    if report.teacher_psnr < min_psnr and not math.isinf(report.teacher_psnr):
        raise StarDeployError(f"teacher-forced image PSNR {report.teacher_psnr:.2f} dB < {min_psnr} dB")


def check_folder(
    artifacts: Path | None,
    backend: str | None,
    validation: Validation,
    json_out: Path | None,
    batch_sizes: list[int] | None = None,
) -> None:
    """Readiness and device memory of DIR's graphs (of the demo's without DIR); with an engine backend, validation."""
    if artifacts is None:
        if backend is not None:
            raise ConfigError(
                f"--backend {backend} validates built engines: pass the artefact folder they were built from"
            )
        check_demo()
        return
    if json_out is not None:
        check_writable(json_out, overwrite=True)
    manifest = load_manifest(artifacts)
    report_readiness(manifest)
    report_memory(manifest, reported_batch_sizes(manifest, batch_sizes))
    if backend is not None:
        validate_engines(artifacts, manifest, engine_backend(backend), validation, json_out)


def validate_engines(
    artifacts: Path, manifest: Manifest, spec: BackendSpec, validation: Validation, json_out: Path | None
) -> None:
    """The engines against ONNX Runtime on the same prompts; exit 2 below the thresholds."""
    from ..engines.sidecar import built_fast_mode, prompts_for

    v = validation
    prompts = prompts_for(manifest.root, list(manifest.graphs), v.prompt, DEFAULT_PROMPTS)
    device = chosen_device(spec, LoadOptions(device=v.device))
    devices = (device, v.reference_device or device)
    ref, test = validation_pipelines(artifacts, manifest, v.reference, spec, devices)
    report = validate(ref, test, prompts, SamplingConfig(seed=v.seed), v.runs, built_fast_mode(manifest.root))
    print_validation(report)
    if json_out is not None:
        write_text(json_out, json.dumps(report_dict(report), indent=2) + "\n", overwrite=True)
    check_thresholds(report, v.min_agreement, v.min_psnr)


@dataclass(frozen=True)
class Validation:
    """How ``check --backend`` validates engines."""

    reference: Path | None
    device: str | None
    reference_device: str | None
    prompt: list[str] | None
    seed: int
    runs: int
    min_agreement: float
    min_psnr: float


Artifacts = Annotated[
    Path | None,
    typer.Argument(
        help="Artefact folder from `star-deploy export`. Default: the built-in demo model, exported to a temporary "
        "folder."
    ),
]
Backend = Annotated[
    str | None, typer.Option(help="tensorrt: also validate DIR/engines on the GPU against ONNX Runtime.")
]
Reference = Annotated[
    Path | None,
    typer.Option(help="Reference artefact folder (e.g. an fp32 export) run with ONNX Runtime. Default: DIR."),
]
Device = Annotated[str | None, typer.Option(help="Device of the engines. Default: the backend's (cuda).")]
ReferenceDevice = Annotated[
    str | None,
    typer.Option(help="Device of the ONNX Runtime reference (cuda needs onnxruntime-gpu). Default: --device."),
]
Prompt = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt",
        help="Validation prompt; repeat for a batch of a built batch size (default: built-in prompts, as many as the "
        "smallest batch size the engines are built for).",
    ),
]
BatchSize = Annotated[
    list[int] | None,
    typer.Option(
        "--batch-size",
        "-b",
        help="Batch size to report device memory for; repeat for several (default: those the engines are built for, "
        "else 1).",
    ),
]
Seed = Annotated[int, typer.Option(help="Seed of the first prompt.")]
Runs = Annotated[int, typer.Option(help="Timed generations per backend (0: no timings).")]
MinAgreement = Annotated[float, typer.Option(help="Fail below this mean teacher-forced token agreement.")]
MinPsnr = Annotated[float, typer.Option(help="Fail below this teacher-forced image PSNR (dB).")]
Json = Annotated[Path | None, typer.Option("--json", help="Also write the validation report as JSON.")]


def check(
    artifacts: Artifacts = None,
    backend: Backend = None,
    reference: Reference = None,
    device: Device = None,
    reference_device: ReferenceDevice = None,
    prompt: Prompt = None,
    batch_size: BatchSize = None,
    seed: Seed = 0,
    runs: Runs = 3,
    min_agreement: MinAgreement = 0.9,
    min_psnr: MinPsnr = 25.0,
    json_out: Json = None,
    artifacts_option: ArtifactsAlias = None,
) -> None:
    """Check that every graph of DIR can be built by TensorRT; with --backend tensorrt, validate the engines.

    Readiness needs no GPU: supported operators, data types, Resize modes, profilable shapes.
    """
    validation = Validation(reference, device, reference_device, prompt, seed, runs, min_agreement, min_psnr)
    folder = artifacts_folder(artifacts, artifacts_option, required=False)
    check_folder(folder, backend, validation, json_out, batch_size)


def check_demo() -> None:
    """Readiness of the built-in demo model's fp32 and fp16 graphs, exported to a temporary folder."""
    from ..export.artifacts import export_artifacts
    from ..release.weights import load_model

    model = load_model(None, None, None, None, None)
    with tempfile.TemporaryDirectory(prefix="star-deploy-check-") as tmp:
        for precision in ("fp32", "fp16"):
            typer.echo(f"built-in demo model, {precision}:")
            manifest = load_manifest(export_artifacts(model, Path(tmp) / precision, precision))
            report_readiness(manifest)
            report_memory(manifest, [1])


def finite(value: float) -> float | None:
    """JSON has no infinity: identical images (infinite PSNR) are written as null."""
    return None if math.isinf(value) else value


def report_dict(report: ValidationReport) -> dict:
    return {
        "parity": {g: {"max_abs": p.max_abs, "max_rel": p.max_rel} for g, p in report.parity.items()},
        "token_agreement": report.token_agreement,
        "teacher_psnr_db": finite(report.teacher_psnr),
        "sampled_psnr_db": finite(report.sampled_psnr),
        "sampled_token_match": report.sampled_token_match,
        "timings_s": report.timings,
    }


command = reports_errors(check)
