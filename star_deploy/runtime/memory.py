"""Up-front memory estimates: refuse a model, batch and device that cannot fit, before loading."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..core.config import StarConfig
from ..core.dtypes import itemsize
from ..errors import MemoryBudgetError

log = logging.getLogger("star_deploy")
GIB = 1024**3
WARN_FRACTION = 0.8


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed to generate one batch, by part."""

    weights: int
    kv_cache: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations

    def describe(self) -> str:
        return (
            f"about {self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, "
            f"KV cache {self.kv_cache / GIB:.1f}, activations {self.activations / GIB:.1f})"
        )


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
    config: StarConfig, batch: int, dtype: str = "float32", device: str = "cpu", weight_bytes: int | None = None
) -> MemoryEstimate:
    """Weights (text encoder fp32, transformer/decoder in ``dtype``; or ``weight_bytes`` of exported
    graphs), KV cache and peak activations."""
    size = itemsize(dtype)
    if weight_bytes is None:
        counts = parameter_counts(config)
        weight_bytes = counts["text_encoder"] * 4 + (counts["transformer"] + counts["vqvae"]) * size
    weights = weight_bytes
    t = config.transformer
    rows = 2 * batch
    tokens = config.total_tokens
    last = config.final_side**2
    kv_cache = t.depth * 2 * rows * tokens * t.width * size
    step = rows * last * (4 * t.width + t.mlp_width) * size + 3 * rows * last * t.vocab_size * 4
    if not device.startswith("cuda"):
        step += rows * t.heads * last * tokens * 4
    side = config.image_size
    decode = 4 * batch * config.vae.ch * side * side * size
    return MemoryEstimate(weights, kv_cache, max(step, decode))


def available_bytes(device: str = "cpu") -> int | None:
    """Free memory of ``device`` (MemAvailable for the CPU), or None when it cannot be read."""
    if device.startswith("cuda"):
        try:
            import torch
        except ImportError:
            return None
        if not torch.cuda.is_available():
            return None
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(need: MemoryEstimate, available: int | None, device: str, what: str) -> None:
    """Refuse when ``need`` exceeds ``available``; warn when it is close."""
    if available is None:
        return
    if need.total > available:
        raise MemoryBudgetError(
            f"{what} needs {need.describe()} but only {available / GIB:.1f} GiB is free on {device}; "
            f"use a smaller --batch-size, --dtype float16 on a GPU, or a machine with more memory"
        )
    if need.total > WARN_FRACTION * available:
        log.warning("%s needs %s of the %.1f GiB free on %s", what, need.describe(), available / GIB, device)
