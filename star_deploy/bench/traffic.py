"""Bytes one generation must move through memory, counted from the config.

Counted: every transformer weight matrix and the logits head read once per scale, the KV
cache read once per scale, the CLIP text tower and the cross-attention K/V projections
read once per prompt batch. Activations, biases and the decoder (compute-bound at every
size) are not counted. At batch 1 on a GPU the early scales are bound by these bytes,
not by their FLOPs.
"""

from __future__ import annotations

from ..core.config import StarConfig
from .flops import StageTotals


def block_weights(config: StarConfig) -> int:
    """Weight-matrix elements of one transformer block (self-, cross-attention, FFN)."""
    t = config.transformer
    c = t.width
    self_attn = 3 * c * c + c * c
    cross = c * c + 2 * t.text_width * c + c * c
    ffn = 2 * c * t.mlp_width
    return self_attn + cross + ffn


def text_weights(config: StarConfig) -> int:
    """Weight-matrix elements of the CLIP tower's layers (the token embedding is a lookup)."""
    t = config.text
    return t.layers * (4 * t.width * t.width + 2 * t.width * t.intermediate)


def generation_bytes(config: StarConfig, batch: int, itemsize: int) -> StageTotals:
    """Bytes moved per stage, weights and cache in elements of ``itemsize`` bytes."""
    t = config.transformer
    rows = 2 * batch
    weights = t.depth * block_weights(config) + t.width * t.vocab_size
    steps = []
    for cached in config.scale_offsets():
        cache = 2 * t.depth * cached * rows * t.width
        steps.append(float((weights + cache) * itemsize))
    cross_kv = t.depth * 2 * t.text_width * t.width
    return StageTotals(text=float((text_weights(config) + cross_kv) * itemsize), steps=steps, update=0.0, decode=0.0)
