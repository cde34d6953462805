"""Settings of a served application, typed: from CLI options, ``serve run ... key=value`` strings or a config file.

The model each replica loads is a ``LoadOptions`` (the API's and the CLI's load options, typed and checked
once), embedded as ``load``; its fields are given at the top level like the serving ones (``backend=torch``,
``device=cuda``), so a config file stays flat.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError
from ..runtime.plan import LOAD_FIELDS, LoadOptions, chosen_backend, chosen_device

MAX_REPLICAS = 1024
MAX_BATCH_SIZE = 1024
MAX_BATCH_WAIT_S = 60.0
"""A replica waits at most this long to fill a batch: a longer wait only delays a lone request."""
MAX_ONGOING_REQUESTS = 100_000
MAX_RETRIES = 100


class Autoscaling(BaseModel):
    """Ray Serve autoscaling: replicas between ``min_replicas`` and ``max_replicas`` by ongoing requests per replica."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_replicas: int = Field(1, ge=0, le=MAX_REPLICAS)
    max_replicas: int = Field(1, ge=1, le=MAX_REPLICAS)
    target_ongoing_requests: float = Field(8.0, gt=0, le=MAX_ONGOING_REQUESTS)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}")
        return self


SERVED_LOAD_FIELDS = tuple(name for name in LOAD_FIELDS if name != "max_batch_size")
"""The load options a served application takes at the top level; ``max_batch_size`` is the replicas' batch."""


class ServeOptions(BaseModel):
    """The pipeline each replica loads (``load``), replicas, resources and batching.

    Every field's bounds and choices are checked here, for the command line and a config file alike
    (numbers are finite), before Ray starts. ``autoscaling_config`` replaces the fixed ``replicas``
    count by Ray Serve's autoscaler: give one or the other.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    load: LoadOptions = LoadOptions()
    replicas: int = Field(1, ge=1, le=MAX_REPLICAS)
    autoscaling_config: Autoscaling | None = None
    num_cpus: float = Field(1.0, ge=0, le=4096)
    num_gpus: float = Field(0.0, ge=0, le=64, description="fractions share a GPU")
    max_batch_size: int = Field(8, ge=1, le=MAX_BATCH_SIZE)
    batch_wait_s: float = Field(0.1, ge=0, le=MAX_BATCH_WAIT_S)
    max_ongoing_requests: int = Field(64, ge=1, le=MAX_ONGOING_REQUESTS)
    retries: int = Field(3, ge=0, le=MAX_RETRIES)

    @model_validator(mode="before")
    @classmethod
    def _load_at_the_top(cls, data: Any) -> Any:
        """``backend=...``, ``device=...`` given beside the serving settings go into ``load``."""
        if not isinstance(data, dict):
            return data
        load = {k: data[k] for k in SERVED_LOAD_FIELDS if k in data}
        rest = {k: v for k, v in data.items() if k not in load}
        return {**rest, "load": load} if load else rest

    @model_validator(mode="after")
    def _consistent(self) -> ServeOptions:
        if self.autoscaling_config is not None and "replicas" in self.model_fields_set:
            raise ValueError(
                "replicas and autoscaling_config both given: a fixed count, or autoscaling_config's min_replicas "
                "and max_replicas"
            )
        if self.num_gpus > 0 and chosen_device(chosen_backend(self.load), self.load) == "cpu":
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
    def min_replicas(self) -> int:
        """Replicas that must be placed for the application to run."""
        return self.autoscaling_config.min_replicas if self.autoscaling_config else self.replicas

    @property
    def max_replicas(self) -> int:
        """The most replicas the application may run."""
        return self.autoscaling_config.max_replicas if self.autoscaling_config else self.replicas

    def model_spec(self) -> LoadOptions:
        """What each replica loads, its memory checked for a full batch; its threads default to the replica's CPUs
        (not every core)."""
        threads = self.load.threads or (int(self.num_cpus) if self.num_cpus >= 1 else 0)
        return replace(self.load, threads=threads, max_batch_size=self.max_batch_size)

    def to_dict(self) -> dict[str, Any]:
        """Every setting at the top level, as a config file gives them (JSON types)."""
        data = self.model_dump(mode="json")
        return {**{k: v for k, v in data.pop("load").items() if k in SERVED_LOAD_FIELDS}, **data}


FLAGS = {
    ("batch_wait_s",): "--batch-wait",
    ("autoscaling_config", "min_replicas"): "--replicas",
    ("autoscaling_config", "target_ongoing_requests"): "--max-batch-size",
    ("autoscaling_config",): "--max-replicas",
}
"""Settings (by their place in ServeOptions) whose command-line option is not --name-with-dashes."""


def flag_for(loc: list[str]) -> str:
    """The command-line option that sets the setting at ``loc`` (the longest known place first)."""
    for size in range(len(loc), 0, -1):
        if tuple(loc[:size]) in FLAGS:
            return FLAGS[tuple(loc[:size])]
    return "--" + loc[0].replace("_", "-") if loc else "options"


def options_error(exc: ValidationError, flags: bool = False) -> str:
    """The first problem of a ``ValidationError`` on one line, naming the setting (or option) and the known ones."""
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    loc = loc[1:] if loc[:1] == ["load"] else loc
    field = ".".join(loc) or "options"
    if flags:
        field = flag_for(loc)
    text = first["msg"].removeprefix("Value error, ")
    message = f"{field}: {text}" if flags else f"serve option {field}: {text}"
    if first.get("type") == "extra_forbidden":
        known = [*SERVED_LOAD_FIELDS, *(name for name in ServeOptions.model_fields if name != "load")]
        message += f"; known: {', '.join(known)}"
    return message
