"""Up-front memory estimates: refuse a model, batch and device that cannot fit, before loading and before each call.

The activation terms are calibrated: ``tests/test_memory.py`` measures the peak resident memory of real
calls at three batch sizes and holds the estimate above it and within 25 % of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from ..backends.registry import MemoryProfile
from ..core.config import StarConfig
from ..core.dtypes import itemsize
from ..errors import MemoryBudgetError

log = logging.getLogger("star_deploy")
GIB = 1024**3
WARN_FRACTION = 0.8


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed to generate, by part: ``outputs`` are the images a call keeps until it returns."""

    weights: int
    kv_cache: int
    activations: int
    outputs: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.outputs

    def describe(self) -> str:
        parts = f"weights {self.weights / GIB:.1f}, " if self.weights else ""
        parts += f"KV cache {self.kv_cache / GIB:.1f}, activations {self.activations / GIB:.1f}"
        if self.outputs:
            parts += f", images {self.outputs / GIB:.1f}"
        return f"about {self.total / GIB:.1f} GiB ({parts})"


def parameter_counts(config: StarConfig) -> dict[str, int]:
    """Exact parameter and buffer counts of each part, from modules built on the meta device."""
    import torch

    from ..model.text import random_text_encoder
    from ..model.transformer import StarTransformer
    from ..model.vqvae import StarVQVAE

    def count(module: torch.nn.Module) -> int:
        return sum(t.numel() for t in module.state_dict().values())

    with torch.device("meta"):
        return {
            "text_encoder": count(random_text_encoder(config.text)),
            "transformer": count(StarTransformer(config.transformer)),
            "vqvae": count(StarVQVAE(config.vae)),
        }


def estimate(
    config: StarConfig,
    batch: int,
    dtype: str = "float32",
    device: str = "cpu",
    weight_bytes: int | None = None,
    profile: MemoryProfile | None = None,
) -> MemoryEstimate:
    """Weights (text encoder fp32, transformer/decoder in ``dtype``; or ``weight_bytes`` of exported
    graphs), KV cache and peak activations of one batch (``profile``: the backend's, default: a generic one)."""
    size = itemsize(dtype)
    if weight_bytes is None:
        counts = parameter_counts(config)
        weight_bytes = counts["text_encoder"] * 4 + (counts["transformer"] + counts["vqvae"]) * size
    working = working_memory(config, batch, dtype, device, profile or MemoryProfile())
    return MemoryEstimate(weight_bytes, working.kv_cache, working.activations)


def working_memory(
    config: StarConfig, batch: int, dtype: str, device: str, profile: MemoryProfile, images: int = 0
) -> MemoryEstimate:
    """What a call on a loaded model adds: KV cache and peak activations of a batch, and ``images`` kept images."""
    size = itemsize(dtype)
    t = config.transformer
    rows = 2 * batch
    tokens = config.total_tokens
    last = config.final_side**2
    kv_cache = t.depth * 2 * rows * tokens * t.width * size
    step = rows * last * (4 * t.width + t.mlp_width) * size + 3 * rows * last * t.vocab_size * 4
    if not device.startswith("cuda"):
        step += rows * t.heads * last * tokens * 4
    decode = decode_bytes(config, batch, dtype, profile)
    return MemoryEstimate(0, kv_cache, max(step, decode) + profile.overhead, images * image_bytes(config))


def decode_bytes(config: StarConfig, batch: int, dtype: str, profile: MemoryProfile) -> int:
    """The decoder's peak activations: ``profile.decode_buffers`` full-resolution feature maps per image."""
    side = config.image_size
    return int(profile.decode_buffers * batch * config.vae.ch * side * side * itemsize(dtype))


def image_bytes(config: StarConfig) -> int:
    """What one finished image holds until the call returns: float32 pixels three times over (the batch's, the
    joined array, the converted output) and its sampled and final tokens."""
    return 3 * 3 * config.image_size**2 * 4 + 2 * config.total_tokens * 8


def available_bytes(device: str = "cpu") -> int | None:
    """Free memory of ``device`` (for the CPU: MemAvailable, or less where a cgroup limit leaves less), or None
    when it cannot be read."""
    if device.startswith("cuda"):
        try:
            import torch
        except ImportError:
            return None
        if not torch.cuda.is_available():
            return None
        return torch.cuda.mem_get_info(torch.device(device))[0]
    free = [b for b in (meminfo_available(), cgroup_available()) if b is not None]
    return min(free) if free else None


def meminfo_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cgroup_available() -> int | None:
    """What this process's cgroup (v2) may still use, where it sets a memory limit."""
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


LOAD_FIX = "use a smaller --batch-size, --dtype float16 on a GPU, or a machine with more memory"
CALL_FIX = "ask for fewer images per call, a smaller batch_size (--batch-size), or use a machine with more memory"


def check_fits(need: MemoryEstimate, available: int | None, device: str, what: str, fix: str = LOAD_FIX) -> None:
    """Refuse when ``need`` exceeds ``available``; warn when it is close."""
    if available is None:
        return
    if need.total > available:
        raise MemoryBudgetError(
            f"{what} needs {need.describe()} but only {available / GIB:.1f} GiB is free on {device}; {fix}"
        )
    if need.total > WARN_FRACTION * available:
        log.warning("%s needs %s of the %.1f GiB free on %s", what, need.describe(), available / GIB, device)


@dataclass(frozen=True)
class CallBudget:
    """The memory check of every generation call on a loaded model (``ScaleLoop.check_memory``)."""

    config: StarConfig
    dtype: str
    device: str
    profile: MemoryProfile

    def need(self, batch: int, images: int) -> MemoryEstimate:
        """What ``images`` images generated in batches of ``batch`` add to the loaded model."""
        return working_memory(self.config, batch, self.dtype, self.device, self.profile, images)

    def check(self, batch: int, images: int) -> None:
        """Refuse ``images`` images in batches of ``batch`` that would not fit, before allocating."""
        need = self.need(batch, images)
        what = f"{images} image(s) at {self.config.resolution} px in batches of {batch}"
        if self.device.startswith("cuda"):
            check_fits(replace(need, outputs=0), available_bytes(self.device), self.device, what, CALL_FIX)
            check_fits(MemoryEstimate(0, 0, 0, need.outputs), available_bytes("cpu"), "cpu", what, CALL_FIX)
        else:
            check_fits(need, available_bytes("cpu"), "cpu", what, CALL_FIX)
