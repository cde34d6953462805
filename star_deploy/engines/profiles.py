"""Optimization profiles of each engine: exact shapes per (batch size, scale).

The transformer step and the scale update get one profile per scale and batch size with
min = opt = max = that scale's shapes (past length included), so TensorRT tunes kernels
for every scale while the weights are shared. The other graphs have one profile per batch
size. Profile index = batch_index * scales + scale (per-scale graphs) or batch_index.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import StarConfig
from ..core.graphs import GraphSpec, scale_dims
from ..errors import ArtifactError, ConfigError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    """One optimization profile: (min, opt, max) of every dynamic input; here min = opt = max."""

    index: int
    batch: int
    scale: int | None
    shapes: dict[str, Shape]

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "batch": self.batch,
            "scale": self.scale,
            "shapes": {k: list(v) for k, v in self.shapes.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Profile:
        shapes = {k: tuple(v) for k, v in data["shapes"].items()}
        return cls(data["index"], data["batch"], data["scale"], shapes)


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


def profile_table(config: StarConfig, spec: GraphSpec, batch_sizes: list[int]) -> list[Profile]:
    """Every profile of ``spec``'s engine, in engine order."""
    names = dynamic_inputs(spec)
    scales: list[int | None] = list(range(config.num_scales)) if spec.per_scale else [None]
    profiles = []
    for batch in check_batch_sizes(batch_sizes):
        for scale in scales:
            dims = profile_dims(config, batch, scale)
            shapes = {n: spec.tensor(n).concrete(dims) for n in names}
            profiles.append(Profile(len(profiles), batch, scale, shapes))
    return profiles


def select_profile(profiles: list[Profile], spec: GraphSpec, batch: int, scale: int | None = None) -> Profile:
    """The profile of ``spec``'s engine built for ``batch`` prompts at ``scale`` (ignored unless per-scale)."""
    want_scale = scale if spec.per_scale else None
    for p in profiles:
        if p.batch == batch and p.scale == want_scale:
            return p
    built = sorted({p.batch for p in profiles})
    raise ArtifactError(
        f"the {spec.name} engine has no profile for batch size {batch} (built for {built}); "
        f"rebuild with `star-deploy build-engine DIR --batch-size {batch}` or run with --batch-size in {built}"
    )
