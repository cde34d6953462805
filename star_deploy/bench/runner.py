"""Time every backend on the same prompts and seeds, against the baseline and the compute floor."""

from __future__ import annotations

import copy
import functools
import gc
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..artifacts.manifest import Manifest
from ..backends.devices import is_cuda
from ..backends.registry import BenchVariant, bench_variants, default_backend
from ..core.call_options import CallOptions
from ..core.config import SamplingConfig, StarConfig
from ..core.cpu_isa import backend_isa, cpu_flags
from ..core.dtypes import itemsize, torch_dtype
from ..core.fast import EXACT, FastMode
from ..core.tokenizer import PromptTokenizer
from ..errors import BackendUnavailableError, ConfigError
from ..evaluation.parity import forced_fidelity
from ..release.weights import StarTorchModel
from ..runtime.pipeline import Generation, ScaleLoop, StageTimes, median_stages
from ..runtime.plan import LoadOptions, chosen_device
from . import BASELINE, BENCH_BACKENDS
from .flops import StageTotals, generation_flops
from .machine import PeakMemory, Roofs, machine_info, measure_roofs
from .traffic import generation_bytes

log = logging.getLogger(__name__)

TORCH_GRAPHS = "torch-cuda-graphs"
"""The torch backend's CUDA-graph line (skipped on a CPU)."""

PROMPTS = (
    "a photo of a red fox sitting in the snow, high quality",
    "a watercolor painting of a lighthouse at sunset",
    "a bowl of ramen on a wooden table",
    "an astronaut riding a horse on the moon",
)


@dataclass(frozen=True)
class BenchSettings:
    """What one ``star-deploy bench`` run measures; ``load`` holds the load options every line shares."""

    backends: tuple[str, ...]
    batch_size: int = 1
    warmup: int = 1
    repeat: int = 3
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    load: LoadOptions = field(default_factory=LoadOptions)
    call: CallOptions = field(default_factory=CallOptions)
    """The fast-mode rung (``fast``, ``cfg_until``, ``keep``) every line but the official-style baseline runs (the
    baseline is exact by definition)."""

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in BENCH_BACKENDS]
        if unknown or not self.backends:
            raise ConfigError(f"--backends {','.join(self.backends)}: choose from {', '.join(BENCH_BACKENDS)}")
        if self.batch_size < 1 or self.warmup < 0 or self.repeat < 1:
            raise ConfigError("--batch-size and --repeat must be >= 1, --warmup >= 0")

    @property
    def device(self) -> str:
        """The device every line runs on: the one asked for, else the reference backend's."""
        return chosen_device(default_backend(artifacts=False), self.load)

    @property
    def dtype(self) -> str:
        return self.load.compute_dtype

    def options(self, variant: BenchVariant) -> LoadOptions:
        """The load options of one line: the run's, with the line's own."""
        return replace(self.load, device=self.device, **variant.options)

    @property
    def prompts(self) -> list[str]:
        return [PROMPTS[i % len(PROMPTS)] for i in range(self.batch_size)]

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.batch_size)]


@dataclass
class BackendRun:
    """Timed generations of one backend plus its fidelity and memory."""

    name: str
    compute_dtype: str
    times: list[StageTimes]
    peak_mem_bytes: int
    first: Generation | None
    fidelity: dict = field(default_factory=dict)
    skipped: str | None = None
    details: dict = field(default_factory=dict)
    """What the backend chose while warming up (decoder layout) and the warm-up wall times (compilation)."""


def quantizer(precision: str) -> Callable[[Path, Path], Path]:
    """The function writing a ``precision`` copy of an fp32 artefact folder."""
    if precision == "int8":
        from ..export.quantize import quantize_artifacts

        return quantize_artifacts
    from ..export.dynamic_quant import MIXED_FLOAT_BLOCKS, dynamic_artifacts

    keep = MIXED_FLOAT_BLOCKS if precision == "int8-mixed" else ()
    return functools.partial(dynamic_artifacts, keep_blocks=keep)


class BackendSource:
    """Builds each backend from a model (copied per backend) and/or artefact directories."""

    def __init__(
        self, model: StarTorchModel | None, artifacts: Path | None, int8_artifacts: Path | None, settings: BenchSettings
    ) -> None:
        self.model = model
        self.settings = settings
        self._artifacts = artifacts
        self._quantized: dict[str, Path] = {} if int8_artifacts is None else {"int8": int8_artifacts}
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.export_seconds: dict[str, float] = {}

    @property
    def config(self) -> StarConfig:
        if self.model is not None:
            return self.model.config
        return self.manifest().config

    def tokenizer_dir(self) -> Path:
        return self.model.tokenizer_dir if self.model is not None else self.manifest().tokenizer_dir

    def _scratch(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="star-bench-")
        return Path(self._tmp.name)

    def artifacts(self) -> Path:
        """The fp32 artefact directory, exported from the model into a scratch folder if needed."""
        if self._artifacts is None:
            if self.model is None:
                raise ConfigError(
                    "onnxruntime needs --artifacts DIR or a model (--weights / --random-weights) to export"
                )
            from ..export.artifacts import export_artifacts

            log.info("exporting the model to ONNX for onnxruntime (pass --artifacts to reuse an export)")
            self._artifacts = timed(
                self.export_seconds, "export", lambda: export_artifacts(self.model, self._scratch() / "fp32", "fp32")
            )
        return self._artifacts

    def quantized_artifacts(self, precision: str) -> Path:
        """The fp32 export quantized to ``precision`` (int8, int8-dynamic or int8-mixed), made on first use."""
        if precision not in self._quantized:
            src, out = self.artifacts(), self._scratch() / precision
            log.info("quantizing %s to %s", src, precision)
            self._quantized[precision] = timed(
                self.export_seconds, f"quantize {precision}", lambda: quantizer(precision)(src, out)
            )
        return self._quantized[precision]

    def manifest(self, precision: str = "fp32") -> Manifest:
        """The artefacts of ``precision``, exported or quantized on first use."""
        from ..artifacts.manifest import load_manifest

        return load_manifest(self.artifacts() if precision == "fp32" else self.quantized_artifacts(precision))

    def build(self, name: str):
        """The backend ``name`` on the settings' device, or BackendUnavailableError."""
        s = self.settings
        if name == BASELINE:
            from ..backends.eager_backend import EagerBackend

            return EagerBackend(copy.deepcopy(self._model(name)), s.device)
        spec, variant = bench_variants()[name]
        if variant.needs_cuda and not is_cuda(s.device):
            raise BackendUnavailableError(f"{name} needs --device cuda")
        options = s.options(variant)
        spec.check(s.device, options)
        if not spec.needs_artifacts:
            return spec.create(copy.deepcopy(self._model(name)), s.device, options)
        backend = spec.create(self.manifest(variant.precision), s.device, options)
        if variant.precision == "int8-mixed":
            from ..export.dynamic_quant import MIXED_FLOAT_SCALES

            backend.step_scales_with(self.manifest(), MIXED_FLOAT_SCALES)
        return backend

    def _model(self, name: str) -> StarTorchModel:
        if self.model is None:
            raise BackendUnavailableError(f"{name} runs the PyTorch model: pass --weights or --random-weights")
        return self.model

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def timed(record: dict[str, float], key: str, func: Callable):
    """Call ``func`` and record its wall time under ``key``."""
    start = time.perf_counter()
    result = func()
    record[key] = time.perf_counter() - start
    return result


def compute_dtype(name: str, backend) -> str:
    """The dtype a backend's matmuls run in, for the floor (a torch backend's --dtype, not an export precision)."""
    if name == BASELINE:
        return "float16" if str(backend.device).startswith("cuda") else "float32"
    variant = bench_variants()[name][1]
    if variant.compute_dtype is not None:
        return variant.compute_dtype
    dtype = getattr(backend, "dtype", torch.float32)
    return str(dtype).removeprefix("torch.")


def run_backend(
    name: str,
    backend,
    tokenizer: PromptTokenizer,
    settings: BenchSettings,
    reference: Generation | None,
    mode: FastMode = EXACT,
) -> BackendRun:
    """Warm up (the first warmup is the teacher-forced fidelity run), then time ``repeat`` runs of ``mode``."""
    pipeline = FastLoop(ScaleLoop(backend, tokenizer), EXACT if name == BASELINE else mode)
    prompts, seeds, sampling = settings.prompts, settings.seeds, settings.sampling
    report: dict = {}
    warmup_s: list[float] = []
    with PeakMemory(torch.device(settings.device)) as memory:
        for i in range(settings.warmup):
            start = time.perf_counter()
            if i == 0 and reference is not None:
                report = forced_fidelity(
                    reference, pipeline.generate(prompts, sampling, seeds, teacher_tokens=reference.tokens)
                )
            else:
                pipeline.generate(prompts, sampling, seeds)
            warmup_s.append(time.perf_counter() - start)
        runs = [pipeline.generate(prompts, sampling, seeds) for _ in range(settings.repeat)]
    if reference is not None:
        if not report:
            report = forced_fidelity(
                reference, pipeline.generate(prompts, sampling, seeds, teacher_tokens=reference.tokens)
            )
        report["tokens_equal_fp32"] = bool(np.array_equal(runs[0].tokens, reference.tokens))
    details = backend_details(backend, warmup_s)
    return BackendRun(
        name, compute_dtype(name, backend), [r.times for r in runs], memory.peak_bytes, runs[0], report, details=details
    )


class FastLoop:
    """A scale loop whose generations run one fast-mode rung."""

    def __init__(self, loop: ScaleLoop, mode: FastMode) -> None:
        self.loop, self.mode = loop, mode

    def generate(self, *args, **kwargs) -> Generation:
        return self.loop.generate(*args, fast=self.mode, **kwargs)


def backend_details(backend, warmup_s: list[float]) -> dict:
    """The warm-up wall times (the first one pays torch.compile), and the decoder layout and dtype a torch backend
    chose."""
    details: dict = {"warmup_s": warmup_s}
    layout = getattr(backend, "decoder_layout", None)
    if layout is not None:
        details["decoder_layout"] = layout.record()
    decoder = getattr(backend, "decoder_dtype", None)
    if decoder is not None:
        details["decoder_dtype"] = str(decoder).removeprefix("torch.")
    return details


def fp32_reference(source: BackendSource, tokenizer: PromptTokenizer, settings: BenchSettings) -> Generation | None:
    """The torch backend's float32 generation on the bench device: what fidelity is measured against.

    On CPU the baseline runs float32 and is the reference itself; on GPU it runs fp16 autocast.
    """
    if source.model is None:
        return None
    log.info("generating the float32 reference")
    spec = default_backend(artifacts=False)
    options = LoadOptions(device=settings.device)
    backend = spec.create(copy.deepcopy(source.model), settings.device, options)
    generation = ScaleLoop(backend, tokenizer).generate(settings.prompts, settings.sampling, settings.seeds)
    del backend
    gc.collect()
    return generation


def run_bench(source: BackendSource, settings: BenchSettings) -> dict:
    """Run every available backend in order (baseline first) and return the report dict."""
    config = source.config
    mode = settings.call.fast_mode(config)
    device = torch.device(settings.device)
    tokenizer = PromptTokenizer(source.tokenizer_dir())
    order = sorted(settings.backends, key=lambda b: b != BASELINE)
    runs: list[BackendRun] = []
    baseline_is_fp32 = BASELINE in order and device.type == "cpu"
    dtypes = roof_dtypes(settings, device)
    roofs = measure_roofs(dtypes, device)
    reference = None if baseline_is_fp32 else fp32_reference(source, tokenizer, settings)
    for name in order:
        try:
            backend = source.build(name)
        except (BackendUnavailableError, ImportError) as exc:
            log.warning("skipping %s: %s", name, exc)
            runs.append(BackendRun(name, "", [], 0, None, skipped=str(exc)))
            continue
        log.info("benchmarking %s", name)
        run = run_backend(name, backend, tokenizer, settings, reference, mode)
        if name == BASELINE and baseline_is_fp32:
            reference = run.first
        runs.append(run)
        del backend
        gc.collect()
    roofs = roofs.best(measure_roofs(dtypes, device))
    report = build_report(config, settings, device, runs, source.export_seconds, roofs)
    lowered = replace(mode, decoder=settings.load.lowered_decoder)
    report["settings"]["fast"] = lowered.record() | {"label": lowered.label(), "baseline": "exact"}
    return report


def roof_dtypes(settings: BenchSettings, device: torch.device) -> dict[str, torch.dtype]:
    """Every compute dtype a backend of this run can report (see compute_dtype)."""
    names = {"float32", settings.dtype} | ({"float16"} if device.type == "cuda" else set())
    return {name: torch_dtype(name) for name in sorted(names)}


def build_report(
    config: StarConfig, settings: BenchSettings, device: torch.device, runs: list[BackendRun], prep: dict, roofs: Roofs
) -> dict:
    """The JSON document: machine, floor, and per backend median/p90/throughput/ratios/stages."""
    flops = generation_flops(config, settings.batch_size)
    throughput, bandwidth = roofs.matmul_flops_per_s, roofs.copy_bytes_per_s
    traffic = {d: generation_bytes(config, settings.batch_size, itemsize(d)) for d in throughput}
    floors = {d: roofline(flops, traffic[d], throughput[d], bandwidth) for d in throughput}
    backends: dict[str, dict] = {}
    baseline_median = None
    for run in runs:
        if run.skipped:
            backends[run.name] = {"skipped": run.skipped}
            continue
        entry = backend_entry(run, settings.batch_size, floors[run.compute_dtype])
        precision = "fp32" if run.name == BASELINE else bench_variants()[run.name][1].precision
        entry["isa"] = "CUDA" if device.type == "cuda" else backend_isa(precision, run.compute_dtype, cpu_flags())
        if run.name == BASELINE:
            baseline_median = entry["median_s"]
        backends[run.name] = entry
    for entry in backends.values():
        if "median_s" in entry:
            entry["vs_baseline"] = baseline_median / entry["median_s"] if baseline_median else None
    return {
        "machine": machine_info(device) | {"matmul_flops_per_s": throughput, "copy_bytes_per_s": bandwidth},
        "model": {
            "preset_shape": config.to_dict(),
            "image_size": config.image_size,
            "flops": flops.to_dict(),
            "bytes_by_dtype": {d: b.to_dict() for d, b in traffic.items()},
        },
        "settings": {
            "batch_size": settings.batch_size,
            "warmup": settings.warmup,
            "repeat": settings.repeat,
            "device": settings.device,
            "dtype": settings.dtype,
            "seeds": settings.seeds,
            "prompts": settings.prompts,
            "sampling": vars(settings.sampling),
        },
        "preparation_s": prep,
        "floor_s": floors["float32"],
        "floor_by_dtype_s": floors,
        "baseline": BASELINE,
        "backends": backends,
    }


def roofline(flops: StageTotals, traffic: StageTotals, flops_per_s: float, bytes_per_s: float) -> float:
    """Seconds at the roofs: per stage and scale, the larger of FLOPs over throughput and bytes over bandwidth."""

    def stage(f: float, b: float) -> float:
        return max(f / flops_per_s, b / bytes_per_s)

    steps = sum(stage(f, b) for f, b in zip(flops.steps, traffic.steps))
    return steps + sum(stage(getattr(flops, s), getattr(traffic, s)) for s in ("text", "update", "decode"))


def backend_entry(run: BackendRun, batch: int, floor: float) -> dict:
    totals = sorted(t.total for t in run.times)
    median = statistics.median(totals)
    p90 = totals[min(len(totals) - 1, round(0.9 * (len(totals) - 1)))]
    stages = median_stages(run.times)
    return {
        "median_s": median,
        "p90_s": p90,
        "images_per_s": batch / median,
        "peak_mem_bytes": run.peak_mem_bytes,
        "compute_dtype": run.compute_dtype,
        "floor_s": floor,
        "vs_floor": median / floor,
        "stages": stages,
        "fidelity": run.fidelity,
        **run.details,
    }
