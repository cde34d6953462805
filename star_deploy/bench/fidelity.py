"""Fidelity of a backend against the float32 baseline: teacher-forced tokens and image PSNR."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..config import SamplingConfig, StarConfig
from ..pipeline import Generation
from ..sampling import apply_cfg, guidance_scale, sample


def resample(config: StarConfig, logits: list[torch.Tensor], sampling: SamplingConfig, seeds: Sequence[int]) -> torch.Tensor:
    """Tokens (B, L) the pipeline would draw from per-scale ``logits`` with generators seeded ``seeds``."""
    sampling = sampling.clamped(config.transformer.vocab_size)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    tokens = []
    for k, scale_logits in enumerate(logits):
        guided = apply_cfg(scale_logits.float().cpu(), guidance_scale(sampling.cfg, k, config.num_scales))
        tokens.append(torch.stack([sample(guided[i], sampling.top_k, sampling.top_p, generators[i]) for i in range(len(seeds))]))
    return torch.cat(tokens, dim=1)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of equal token ids."""
    return float((a.cpu() == b.cpu()).float().mean())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]; inf when identical."""
    mse = float(((a.float().cpu() - b.float().cpu()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def fidelity(config: StarConfig, reference: Generation, forced: Generation, sampling: SamplingConfig, seeds: Sequence[int]) -> dict:
    """Compare a teacher-forced run (forced on ``reference.tokens``, logits kept) with the reference."""
    tokens = resample(config, forced.logits, sampling, seeds)
    return {
        "teacher_forced_token_agreement": agreement(tokens, reference.tokens),
        "image_psnr_db": psnr(forced.images, reference.images),
    }
