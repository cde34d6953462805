"""Fidelity of a backend against the float32 reference: teacher-forced tokens and image PSNR."""

from __future__ import annotations

import math

import torch

from ..pipeline import Generation


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of equal token ids."""
    return float((a.cpu() == b.cpu()).float().mean())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]; inf when identical."""
    mse = float(((a.float().cpu() - b.float().cpu()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def fidelity(reference: Generation, forced: Generation) -> dict:
    """Compare a run teacher-forced on ``reference.tokens`` with the reference.

    Both sampled with generators of the same seeds on the same device, so each token the
    forced run draws is the one the reference drew wherever their logits agree closely.
    """
    return {
        "teacher_forced_token_agreement": agreement(forced.sampled, reference.tokens),
        "image_psnr_db": psnr(forced.images, reference.images),
    }
