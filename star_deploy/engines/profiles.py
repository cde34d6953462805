"""Optimization profiles of each engine: exact shapes per (batch size, scale).

The transformer step and the scale update get one profile per scale and batch size with
min = opt = max = that scale's shapes (past length included), so TensorRT tunes kernels
for every scale while the weights are shared. The other graphs have one profile per batch
size. Profile index = batch_index * scales + scale (per-scale graphs) or batch_index.
Built with conditional rows (fast modes: guidance stopped), the step engine also gets, after
those, one profile per batch size and scale for its B conditional rows (``rows`` = B).
The pruned step (fast mode 2) gets one profile per batch size and scale it runs under the fast
mode it is built for: its kept tokens, rows and cache length are fixed per scale by the mode's
plan, so each profile has exact shapes too (``kept`` records the scale's kept tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import StarConfig
from ..core.fast import FastMode, ScalePlan, scale_plans
from ..core.graphs import PRUNED_STEP, GraphSpec, scale_dims
from ..errors import ArtifactError, ConfigError

Shape = tuple[int, ...]
STEP_GRAPH = "transformer_step"


@dataclass(frozen=True)
class Profile:
    """One optimization profile: (min, opt, max) of every dynamic input; here min = opt = max."""

    index: int
    batch: int
    scale: int | None
    shapes: dict[str, Shape]
    rows: int | None = None
    """The step's rows when not both CFG rows: the B conditional rows of a scale after guidance stops."""
    kept: int | None = None
    """The pruned step's kept tokens at this scale (None: a graph that is not pruned)."""

    def to_dict(self) -> dict:
        data = {
            "index": self.index,
            "batch": self.batch,
            "scale": self.scale,
            "shapes": {k: list(v) for k, v in self.shapes.items()},
        }
        optional = {"rows": self.rows, "kept": self.kept}
        return data | {k: v for k, v in optional.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> Profile:
        shapes = {k: tuple(v) for k, v in data["shapes"].items()}
        return cls(data["index"], data["batch"], data["scale"], shapes, data.get("rows"), data.get("kept"))


def dynamic_inputs(spec: GraphSpec) -> list[str]:
    """Inputs with at least one symbolic dimension: the ones a profile must set."""
    return [t.name for t in spec.inputs if any(isinstance(d, str) for d in t.shape)]


def profile_dims(config: StarConfig, batch: int, scale: int | None) -> dict[str, int]:
    """Symbolic dimensions at ``batch`` prompts and ``scale`` (None: a graph that is not per-scale)."""
    if scale is None:
        return {"batch": batch, "rows": 2 * batch}
    return scale_dims(config, batch, scale)


def check_batch_sizes(batch_sizes: list[int]) -> list[int]:
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ConfigError(f"--batch-size values must be >= 1, got {batch_sizes}")
    return sorted(set(batch_sizes))


def profile_table(
    config: StarConfig,
    spec: GraphSpec,
    batch_sizes: list[int],
    conditional_rows: bool = False,
    fast: FastMode | None = None,
) -> list[Profile]:
    """Every profile of ``spec``'s engine, in engine order (``conditional_rows``: the step's B-row ones too).

    The pruned step's profiles are those of the scales ``fast`` prunes (none without a fast mode).
    """
    if spec.name == PRUNED_STEP:
        return pruned_profiles(config, spec, batch_sizes, fast)
    names = dynamic_inputs(spec)
    scales: list[int | None] = list(range(config.num_scales)) if spec.per_scale else [None]
    profiles = []
    row_choices = [False, True] if conditional_rows and spec.name == STEP_GRAPH else [False]
    for conditional in row_choices:
        for batch in check_batch_sizes(batch_sizes):
            for scale in scales:
                dims = profile_dims(config, batch, scale) | ({"rows": batch} if conditional else {})
                shapes = {n: spec.tensor(n).concrete(dims) for n in names}
                profiles.append(Profile(len(profiles), batch, scale, shapes, batch if conditional else None))
    return profiles


def pruned_profiles(
    config: StarConfig, spec: GraphSpec, batch_sizes: list[int], fast: FastMode | None
) -> list[Profile]:
    """One profile per batch size and scale that runs the pruned step under ``fast``, with that scale's shapes."""
    plans = scale_plans(config, fast) if fast is not None else ()
    names = dynamic_inputs(spec)
    profiles = []
    for batch in check_batch_sizes(batch_sizes):
        for scale, plan in enumerate(plans):
            if plan.residual:
                dims = scale_dims(config, batch, scale, plans)
                shapes = {n: spec.tensor(n).concrete(dims) for n in names}
                rows = None if plan.guided else batch
                profiles.append(Profile(len(profiles), batch, scale, shapes, rows, plan.kept))
    return profiles


def select_profile(
    profiles: list[Profile],
    spec: GraphSpec,
    batch: int,
    scale: int | None = None,
    rows: int | None = None,
) -> Profile:
    """The profile of ``spec``'s engine built for ``batch`` prompts at ``scale`` (ignored unless per-scale).

    ``rows``: the step's conditional rows alone (None: both CFG rows).
    """
    want_scale = scale if spec.per_scale else None
    for p in profiles:
        if p.batch == batch and p.scale == want_scale and p.rows == rows:
            return p
    if rows is not None:
        raise ArtifactError(
            f"the {spec.name} engine has no profiles for the conditional rows of fast modes; "
            "rebuild with `star-deploy build-engine DIR --conditional-rows`"
        )
    built = sorted({p.batch for p in profiles})
    raise ArtifactError(
        f"the {spec.name} engine has no profile for batch size {batch} (built for {built}); "
        f"rebuild with `star-deploy build-engine DIR --batch-size {batch}` or run with --batch-size in {built}"
    )


def select_pruned_profile(
    profiles: list[Profile], spec: GraphSpec, config: StarConfig, batch: int, scale: int, plans: tuple[ScalePlan, ...]
) -> Profile:
    """The pruned step's profile with the exact shapes ``scale`` has under ``plans`` (kept tokens, rows, cache)."""
    dims = scale_dims(config, batch, scale, plans)
    shapes = {n: spec.tensor(n).concrete(dims) for n in dynamic_inputs(spec)}
    for p in profiles:
        if p.batch == batch and p.scale == scale and p.shapes == shapes:
            return p
    raise ArtifactError(
        f"the {spec.name} engine has no profile for scale {scale} keeping {dims['kept']} tokens of {dims['rows']} "
        f"rows at batch size {batch}; build it for this run's fast mode: `star-deploy build-engine DIR --graph "
        f"{spec.name} --overwrite` with the run's --batch-size, --fast 2, --cfg-until and --keep"
    )
