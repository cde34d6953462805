"""Typed, frozen configuration: model shapes, scale schedules, presets and sampler settings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import ConfigError

SCHEDULES: dict[int, tuple[int, ...]] = {
    128: (1, 2, 3, 4, 6, 8),
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}
"""Side of each scale's token map, by output resolution in pixels."""

VAE_DOWNSAMPLE = 16
MAX_TEXT_TOKENS = 77
HEAD_DIM = 64
NUM_PHI = 4
SAMPLERS = ("portable", "official")
"""``SamplingConfig.sampler`` values: the default first."""
MAX_CFG = 1000.0
"""Guidance beyond this multiplies float32 logits towards overflow (inf - inf = NaN) and means nothing."""


@dataclass(frozen=True)
class TextEncoderConfig:
    """A CLIPTextModel's shape (SD 2.1's OpenCLIP ViT-H text tower by default)."""

    width: int = 1024
    layers: int = 23
    heads: int = 16
    intermediate: int = 4096
    vocab_size: int = 49408
    max_length: int = MAX_TEXT_TOKENS
    activation: str = "gelu"


HF_FIELDS = {
    "width": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "intermediate": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_length": "max_position_embeddings",
    "activation": "hidden_act",
}
"""TextEncoderConfig field -> transformers CLIPTextConfig attribute."""


@dataclass(frozen=True)
class TransformerConfig:
    """The STAR transformer's shape; everything else derives from it."""

    depth: int
    width: int
    heads: int
    text_width: int
    vocab_size: int
    cvae: int
    num_scales: int
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_norm: float = 64.0

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_width(self) -> int:
        return round(self.width * self.mlp_ratio)


@dataclass(frozen=True)
class VaeConfig:
    """The multi-scale VQVAE's shape (decoder side)."""

    vocab_size: int
    cvae: int
    ch: int
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    quant_resi: float = 0.5


@dataclass(frozen=True)
class StarConfig:
    """Everything needed to run one STAR model at one resolution."""

    transformer: TransformerConfig
    vae: VaeConfig
    text: TextEncoderConfig
    resolution: int
    patch_nums: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.patch_nums:
            object.__setattr__(self, "patch_nums", schedule_for(self.resolution))
        if len(self.patch_nums) != self.transformer.num_scales:
            raise ConfigError(
                f"resolution {self.resolution} has {len(self.patch_nums)} scales but the "
                f"transformer was trained with {self.transformer.num_scales} (lvl_embed rows); "
                f"pass the resolution the checkpoint was trained for"
            )
        if self.vae.cvae != self.transformer.cvae or self.vae.vocab_size != self.transformer.vocab_size:
            raise ConfigError(
                f"VAE (V={self.vae.vocab_size}, Cvae={self.vae.cvae}) does not match the transformer "
                f"(V={self.transformer.vocab_size}, Cvae={self.transformer.cvae}): use the VAE released "
                f"with this STAR checkpoint"
            )
        if self.text.width != self.transformer.text_width:
            raise ConfigError(
                f"text encoder width {self.text.width} does not match the transformer's "
                f"text width {self.transformer.text_width}"
            )

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def final_side(self) -> int:
        return self.patch_nums[-1]

    @property
    def image_size(self) -> int:
        return self.final_side * 2 ** (len(self.vae.ch_mult) - 1)

    @property
    def total_tokens(self) -> int:
        return sum(p * p for p in self.patch_nums)

    def scale_offsets(self) -> list[int]:
        """Cache length before each scale (the past length the step sees)."""
        offsets, total = [], 0
        for p in self.patch_nums:
            offsets.append(total)
            total += p * p
        return offsets

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StarConfig:
        vae = dict(data["vae"])
        vae["ch_mult"] = tuple(vae["ch_mult"])
        return cls(
            transformer=TransformerConfig(**data["transformer"]),
            vae=VaeConfig(**vae),
            text=TextEncoderConfig(**data["text"]),
            resolution=int(data["resolution"]),
            patch_nums=tuple(data["patch_nums"]),
        )


def schedule_for(resolution: int) -> tuple[int, ...]:
    """The scale schedule of a resolution, or a clear error."""
    if resolution not in SCHEDULES:
        known = ", ".join(str(r) for r in SCHEDULES)
        raise ConfigError(f"no scale schedule for resolution {resolution}; choose one of {known}")
    return SCHEDULES[resolution]


def _preset(depth: int, resolution: int) -> StarConfig:
    width = 64 * depth
    return StarConfig(
        transformer=TransformerConfig(
            depth=depth,
            width=width,
            heads=depth,
            text_width=1024,
            vocab_size=4096,
            cvae=32,
            num_scales=len(SCHEDULES[resolution]),
        ),
        vae=VaeConfig(vocab_size=4096, cvae=32, ch=160),
        text=TextEncoderConfig(),
        resolution=resolution,
    )


def _tiny() -> StarConfig:
    """The golden test model's shape (random weights; see tests/fixtures/tiny256)."""
    return StarConfig(
        transformer=TransformerConfig(
            depth=2, width=128, heads=2, text_width=64, vocab_size=256, cvae=8, num_scales=10
        ),
        vae=VaeConfig(vocab_size=256, cvae=8, ch=32),
        text=TextEncoderConfig(width=64, layers=2, heads=2, intermediate=256),
        resolution=256,
    )


PRESETS: dict[str, StarConfig] = {
    "256-d16": _preset(16, 256),
    "256-d30": _preset(30, 256),
    "512-d30": _preset(30, 512),
    "1024-d30": _preset(30, 1024),
    "tiny": _tiny(),
}


def preset(name: str) -> StarConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class SamplingConfig:
    """Sampler settings of the official scripts; validated on construction.

    ``sampler`` is ``portable`` (the same tokens for a seed on every backend and device) or
    ``official`` (the official code's torch.Generator draws); see ``star_deploy.core.sampling``.
    """

    cfg: float = 4.0
    top_k: int = 600
    top_p: float = 0.8
    seed: int = 0
    sampler: str = "portable"

    def __post_init__(self) -> None:
        if not math.isfinite(self.cfg) or not 0 <= self.cfg <= MAX_CFG:
            raise ConfigError(f"cfg must be a finite number in [0, {MAX_CFG:g}], got {self.cfg}")
        if self.top_k < 0:
            raise ConfigError(f"top-k must be >= 0 (0 disables it), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0) or math.isnan(self.top_p):
            raise ConfigError(f"top-p must be in (0, 1], got {self.top_p}")
        if not (0 <= self.seed < 2**63):
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")

    def clamped(self, vocab_size: int) -> SamplingConfig:
        """top_k clamped to the codebook size (the official code crashes past it)."""
        return replace(self, top_k=min(self.top_k, vocab_size))
