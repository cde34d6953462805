"""The model a batch job runs: its checked ``LoadPlan``, the options every process loads it from, and what names it."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts.manifest import MANIFEST
from ..runtime.plan import LoadOptions, LoadPlan, plan_load

if TYPE_CHECKING:
    from ..api import StarPipeline

FOLDERS = ("weights", "artifacts", "clip", "vae", "star", "compile_cache")
"""The load options that name a file or folder (absolute in what travels to Ray workers)."""


def absolute(path: Path | None) -> Path | None:
    return None if path is None else path.resolve()


def named(path: Path | None) -> str | None:
    """A folder or file as the job record names it: its absolute path."""
    return None if path is None else str(path.resolve())


def load_pipeline(plan: LoadPlan, max_batch_size: int) -> StarPipeline:
    """The pipeline of ``plan`` for batches of ``max_batch_size``, quiet (no progress bar over scales)."""
    from ..api import StarPipeline

    pipe = StarPipeline.from_plan(replace(plan, options=replace(plan.options, max_batch_size=max_batch_size)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def worker_options(plan: LoadPlan) -> LoadOptions:
    """The plan's options as a Ray worker plans them again (``worker_plan``): its backend and device, folders
    absolute."""
    options = plan.options
    folders = {name: absolute(getattr(options, name)) for name in FOLDERS}
    return replace(options, backend=plan.backend, device=plan.device, **folders)


def worker_plan(options: LoadOptions, cpus: int) -> LoadPlan:
    """On a Ray worker: ``options`` planned on its node, threads defaulting to the worker's ``cpus``."""
    return plan_load(replace(options, threads=options.threads or cpus))


def identity(plan: LoadPlan) -> dict[str, Any]:
    """What names the model in the job record: its folder and parts and, for exports, the manifest's sha256."""
    options = plan.options
    folder = plan.artifacts if plan.spec.needs_artifacts else options.weights
    found: dict[str, Any] = {"path": named(folder), **{k: named(getattr(options, k)) for k in ("clip", "vae", "star")}}
    if plan.artifacts is not None:
        found["manifest_sha256"] = hashlib.sha256((plan.artifacts / MANIFEST).read_bytes()).hexdigest()
    return found
