"""Settings of a served application, from CLI options or a Serve config file's ``args``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigError
from .model import ModelSpec


@dataclass(frozen=True)
class ServeOptions(ModelSpec):
    """The pipeline each replica loads (``ModelSpec``'s fields), replicas, resources and batching."""

    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_batch_size: int = 8
    batch_wait_s: float = 0.1
    max_ongoing_requests: int = 64
    retries: int = 3

    def __post_init__(self) -> None:
        checks = (
            (self.replicas >= 1, f"replicas must be >= 1, got {self.replicas}"),
            (self.num_cpus >= 0, f"num_cpus must be >= 0, got {self.num_cpus}"),
            (self.num_gpus >= 0, f"num_gpus must be >= 0 (fractions share a GPU), got {self.num_gpus}"),
            (self.max_batch_size >= 1, f"max_batch_size must be >= 1, got {self.max_batch_size}"),
            (self.batch_wait_s >= 0, f"batch_wait_s must be >= 0, got {self.batch_wait_s}"),
            (self.max_ongoing_requests >= 1, f"max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}"),
            (self.retries >= 0, f"retries must be >= 0, got {self.retries}"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.num_gpus > 0 and (self.device or "cpu") == "cpu" and self.runtime != "tensorrt":
            raise ConfigError("num_gpus > 0 with device cpu wastes the GPU; pass device cuda or num_gpus 0")

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServeOptions:
        """Options from a Serve config file's ``args`` mapping; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ConfigError(f"unknown serve args {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**args)

    def model_spec(self) -> ModelSpec:
        """What each replica loads; ONNX Runtime's threads default to the replica's CPUs (not every core)."""
        spec = {f.name: getattr(self, f.name) for f in fields(ModelSpec)}
        if spec["threads"] == 0 and self.num_cpus >= 1:
            spec["threads"] = int(self.num_cpus)
        return ModelSpec(**spec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
