"""Seeded random-weight models of any preset's shape, for benchmarks and tests."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import StarConfig
from .model.text import random_text_encoder
from .model.transformer import StarTransformer
from .model.vqvae import StarVQVAE
from .weights import StarModel

BUNDLED_TOKENIZER = Path(__file__).resolve().parent / "data" / "clip_tokenizer"


def random_model(config: StarConfig, seed: int = 0) -> StarModel:
    """A StarModel of ``config``'s shape with reproducible random weights and the CLIP tokenizer."""
    torch.manual_seed(seed)
    transformer = StarTransformer(config.transformer).eval()
    vqvae = StarVQVAE(config.vae).eval()
    text_encoder = random_text_encoder(config.text, seed)
    return StarModel(config, text_encoder, transformer, vqvae, BUNDLED_TOKENIZER, {})
