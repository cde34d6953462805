"""Seeded random-weight models of any preset's shape, for benchmarks and tests."""

from __future__ import annotations

import torch

from ..core.config import StarConfig
from ..demo import DEMO_WEIGHTS
from ..model.text import random_text_encoder
from ..model.transformer import StarTransformer
from ..model.vqvae import StarVQVAE
from .weights import StarTorchModel

BUNDLED_TOKENIZER = DEMO_WEIGHTS / "CLIP" / "tokenizer"
"""The CLIP tokenizer files shipped with the demo model (the official STAR tokenizer)."""


def random_model(config: StarConfig, seed: int = 0) -> StarTorchModel:
    """A StarTorchModel of ``config``'s shape with reproducible random weights and the CLIP tokenizer."""
    torch.manual_seed(seed)
    transformer = StarTransformer(config.transformer).eval()
    vqvae = StarVQVAE(config.vae).eval()
    text_encoder = random_text_encoder(config.text, seed)
    return StarTorchModel(config, text_encoder, transformer, vqvae, BUNDLED_TOKENIZER, {})
