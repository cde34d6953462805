"""Load a checked ``LoadPlan``: weights on torch, or an artefact folder on a graph runtime.

Everything cheap was checked by ``plan_load``; what is left needs the files themselves: the
weights' shapes and values, the artefacts' digests, and whether the model fits in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..backends.registry import default_backend
from ..core.config import SamplingConfig
from .plan import LoadOptions, LoadPlan, chosen_device

log = logging.getLogger("star_deploy")

if TYPE_CHECKING:
    from ..artifacts.manifest import Manifest
    from ..core.config import StarConfig
    from ..release.weights import StarTorchModel
    from .memory import CallBudget
    from .pipeline import ScaleLoop


@dataclass
class Loaded:
    """A ready scale loop and what the pipeline reports about it."""

    loop: ScaleLoop
    backend: str
    precision: str
    defaults: SamplingConfig
    model: StarTorchModel | None = None
    manifest: Manifest | None = None
    decoder: str | None = None
    """The decoder's dtype where a load option lowered it (``LoadOptions.lowered_decoder``)."""


def memory_check(plan: LoadPlan, dtype: str, weight_bytes: int | None = None):
    """A check of the config (before weights materialize) that the plan's ``max_batch_size`` images fit."""
    from .memory import available_bytes, check_fits, estimate

    batch, device = plan.options.max_batch_size, plan.device

    def check(config: Any) -> None:
        need = estimate(config, batch, dtype, device, weight_bytes, plan.spec.memory)
        check_fits(need, available_bytes(device), device, f"batch {batch} at {config.resolution} px")

    return check


def call_budget(plan: LoadPlan, config: StarConfig, dtype: str) -> CallBudget:
    """The memory check of every call on what ``plan`` loads."""
    from .memory import CallBudget

    return CallBudget(config, dtype, plan.device, plan.spec.memory)


def reference_backend(model: StarTorchModel) -> Any:
    """The PyTorch reference of ``model`` in float32 on the reference backend's default device (the CPU)."""
    spec, options = default_backend(artifacts=False), LoadOptions()
    return spec.create(model, chosen_device(spec, options), options)


def graphs_backend(manifest: Manifest) -> Any:
    """An export on the default graph runtime (ONNX Runtime) with its default device and options."""
    spec, options = default_backend(artifacts=True), LoadOptions()
    return spec.create(manifest, chosen_device(spec, options), options)


def model_config(plan: LoadPlan) -> StarConfig:
    """The config of what ``plan`` loads, read without loading it: the manifest's, or the release's tensor shapes."""
    if plan.spec.needs_artifacts:
        from ..artifacts.manifest import MANIFEST, read_manifest
        from ..artifacts.schema import parse_config

        return parse_config(read_manifest(plan.artifacts)["config"], plan.artifacts / MANIFEST)
    from ..release.weights import read_release_config

    return read_release_config(plan.release, plan.resolution)[0]


def load(plan: LoadPlan) -> Loaded:
    """Load what ``plan`` names, on its backend and device."""
    if plan.spec.needs_artifacts:
        return load_graphs(plan)
    return load_release(plan)


def load_release(plan: LoadPlan) -> Loaded:
    """The plan's release on a backend that runs weights."""
    from ..core.tokenizer import PromptTokenizer
    from ..release.weights import load_release as load_weights
    from .pipeline import ScaleLoop

    options = plan.options
    log.info("loading %s", plan.release.star)
    dtype = options.compute_dtype
    model = load_weights(plan.release, plan.resolution, memory_check(plan, dtype))
    engine = plan.spec.create(model, plan.device, options)
    loop = ScaleLoop(engine, PromptTokenizer(model.tokenizer_dir), call_budget(plan, model.config, dtype))
    return Loaded(loop, plan.backend, dtype, SamplingConfig(), model=model, decoder=options.lowered_decoder)


def load_graphs(plan: LoadPlan) -> Loaded:
    """The plan's artefact folder, its files hash-checked and its sources matched, on a graph backend."""
    from ..artifacts.manifest import load_manifest
    from ..artifacts.sources import check_sources
    from ..core.tokenizer import PromptTokenizer
    from .pipeline import ScaleLoop

    manifest = load_manifest(plan.artifacts)
    if plan.release is not None:
        check_sources(manifest, plan.release, "export again from these weights or drop the weight options")
    dtype = "float16" if manifest.precision == "fp16" else "float32"
    memory_check(plan, dtype, manifest.graph_bytes)(manifest.config)
    engine = plan.spec.create(manifest, plan.device, plan.options)
    loop = ScaleLoop(engine, PromptTokenizer(manifest.tokenizer_dir), call_budget(plan, manifest.config, dtype))
    return Loaded(loop, plan.backend, manifest.precision, manifest.sampling, manifest=manifest)
