"""Settings of a served application, typed: from CLI options, ``serve run ... key=value`` strings or a config file."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError
from .model import ModelSpec


class Autoscaling(BaseModel):
    """Ray Serve autoscaling: replicas between ``min_replicas`` and ``max_replicas`` by ongoing requests per replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}")
        return self


class ServeOptions(BaseModel):
    """The pipeline each replica loads (``ModelSpec``'s fields), replicas, resources and batching.

    ``autoscaling_config`` replaces the fixed ``replicas`` count by Ray Serve's autoscaler.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str | None = None
    weights: str | None = None
    artifacts: str | None = None
    device: str | None = None
    dtype: str = "float32"
    threads: int = Field(0, ge=0)
    replicas: int = Field(1, ge=1)
    autoscaling_config: Autoscaling | None = None
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, description="fractions share a GPU")
    max_batch_size: int = Field(8, ge=1)
    batch_wait_s: float = Field(0.1, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)
    retries: int = Field(3, ge=0)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, backend: str | None) -> str | None:
        from ..backends.factory import BACKENDS

        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        return backend

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str | None) -> str | None:
        from ..backends.factory import check_device_name

        try:
            check_device_name(device or "cpu")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return device

    @model_validator(mode="after")
    def _consistent(self) -> ServeOptions:
        if self.num_gpus > 0 and (self.device or "cpu") == "cpu" and self.runtime != "tensorrt":
            raise ValueError("num_gpus > 0 with device cpu wastes the GPU; pass device cuda or num_gpus 0")
        return self

    @classmethod
    def parse(cls, args: dict[str, Any], flags: bool = False) -> ServeOptions:
        """Options from a mapping (strings as ``serve run`` passes them, or a config file's ``args``).

        ``flags``: errors name the command-line option (``--num-cpus``) instead of the setting.
        """
        try:
            return cls.model_validate(dict(args))
        except ValidationError as exc:
            raise ConfigError(options_error(exc, flags)) from None

    @property
    def runtime(self) -> str:
        """The backend each replica loads."""
        return self.model_spec().runtime

    @property
    def min_replicas(self) -> int:
        """Replicas that must be placed for the application to run."""
        return self.autoscaling_config.min_replicas if self.autoscaling_config else self.replicas

    @property
    def max_replicas(self) -> int:
        """The most replicas the application may run."""
        return self.autoscaling_config.max_replicas if self.autoscaling_config else self.replicas

    def model_spec(self) -> ModelSpec:
        """What each replica loads; ONNX Runtime's threads default to the replica's CPUs (not every core)."""
        threads = self.threads or (int(self.num_cpus) if self.num_cpus >= 1 else 0)
        return ModelSpec(self.backend, self.weights, self.artifacts, self.device, self.dtype, threads)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


FLAGS = {"batch_wait_s": "--batch-wait", "autoscaling_config": "--max-replicas"}
"""Settings whose command-line option is not --name-with-dashes."""


def options_error(exc: ValidationError, flags: bool = False) -> str:
    """The first problem of a ``ValidationError`` on one line, naming the setting (or option) and the known ones."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or "options"
    if flags:
        name = str(first.get("loc", ("",))[0])
        field = FLAGS.get(name, "--" + name.replace("_", "-")) if name else "options"
    text = first["msg"].removeprefix("Value error, ")
    message = f"{field}: {text}" if flags else f"serve option {field}: {text}"
    if first.get("type") == "extra_forbidden":
        message += f"; known: {', '.join(ServeOptions.model_fields)}"
    return message
