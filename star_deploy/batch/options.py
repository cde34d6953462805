"""A batch job's settings, typed and checked in one place (the CLI builds them; the job reads them)."""

from __future__ import annotations

import math
import numbers
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core import arguments
from ..core.call_options import CallOptions
from ..errors import BackendUnavailableError, ConfigError
from ..runtime.plan import LoadOptions, LoadPlan, plan_load
from .layout import check_layout
from .model import identity
from .plan import ItemSampling

PROBE_SECONDS = 5.0
"""How long ``--ray HOST:PORT`` waits for a connection before the address is refused."""


@dataclass(frozen=True)
class RayOptions:
    """Where the job runs on Ray and how large each worker (an actor holding one pipeline) is."""

    address: str = "auto"
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def check(self) -> None:
        arguments.integer("--workers", self.workers, 1)
        for name, value in (("--cpus-per-worker", self.cpus_per_worker), ("--gpus-per-worker", self.gpus_per_worker)):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} {value:g}: give a number >= 0")
        if self.address != "auto":
            probe(self.address)


@dataclass(frozen=True)
class BatchOptions:
    """Everything a batch job is asked to do: the model (``load``), how it samples (``call``), and where."""

    prompts: Path
    out: Path
    load: LoadOptions = field(default_factory=LoadOptions)
    call: CallOptions = field(default_factory=lambda: CallOptions(batch_size=1))
    images_per_prompt: int = 1
    layout: str = "default"
    overwrite: bool = False
    ray: RayOptions | None = None

    @property
    def seed(self) -> int:
        return int(self.call.seed)  # type: ignore[arg-type]  # check() refuses a list

    @property
    def batch_size(self) -> int:
        return self.call.batch_size or 1

    @property
    def sampling(self) -> ItemSampling:
        c = self.call
        return ItemSampling(c.guidance_scale, c.top_k, c.top_p, c.fast, c.cfg_until, c.keep)

    def check(self) -> LoadPlan:
        """Refuse bad values before anything is read, loaded or written; the model's checked plan."""
        if not isinstance(self.call.seed, numbers.Integral):
            raise ConfigError("seed: give one integer (image i of the plan uses seed+i) or a prompt line's seed")
        arguments.integer("--images-per-prompt", self.images_per_prompt, 1)
        check_layout(self.layout)
        plan = plan_load(self.load)
        if self.ray is not None:
            require_ray_data()
            self.ray.check()
        return plan

    def settings(self, plan: LoadPlan) -> dict[str, Any]:
        """The settings that shape the images (the job record compares them on a rerun); ``decoder_dtype`` only
        where given, so jobs recorded before it existed continue."""
        decoder = {"decoder_dtype": self.load.decoder_dtype} if self.load.decoder_dtype is not None else {}
        return {
            "seed": self.seed,
            "images_per_prompt": self.images_per_prompt,
            **asdict(self.sampling),
            "keep": None if self.call.keep is None else list(self.call.keep),
            "sampler": self.call.sampler,
            "batch_size": self.batch_size,
            "layout": self.layout,
            "backend": plan.backend,
            "device": plan.device,
            "dtype": self.load.compute_dtype,
            **decoder,
            "resolution": self.load.resolution,
            "precision": plan.precision,
            "model": identity(plan),
        }


def require_ray_data() -> None:
    """Refuse --ray on an install without Ray Data, naming the extra."""
    try:
        import ray.data  # noqa: F401
    except ModuleNotFoundError as exc:
        raise BackendUnavailableError(
            f"--ray needs Ray Data (missing module {exc.name}): pip install 'star-deploy[batch]'"
        ) from None


def probe(address: str) -> None:
    """Refuse a HOST:PORT where nothing accepts connections, within ``PROBE_SECONDS``."""
    if address.startswith("ray://"):
        raise ConfigError(f"--ray {address}: Ray Client addresses are not supported; give auto or the GCS HOST:PORT")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ray {address}: give auto or the cluster's HOST:PORT (the head's GCS port, e.g. :6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ConfigError(
            f"--ray {address}: nothing answers there ({reason}); start the cluster (`ray start --head`) or give its "
            "address"
        ) from None
