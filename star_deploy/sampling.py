"""CFG ramp and top-k/top-p sampling: the portable sampler in numpy, shared rules for every backend.

Two samplers exist (``SamplingConfig.sampler``):
- ``portable`` (default): CFG, top-k/top-p and the draw in float64, one uniform per token from
  a counter-based generator keyed by (seed, scale), inverse-CDF over token ids. The same
  seed gives the same tokens on every backend and device, with or without torch, up to
  floating-point ties of the backends' logits.
- ``official``: the official sampler's float32 math and ``torch.multinomial`` draws from one
  ``torch.Generator`` per prompt on the backend's device (``backends/torch_sampling.py``);
  on CPU it reproduces the official code's tokens draw for draw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import SamplingConfig

def guidance_scale(cfg: float, scale: int, num_scales: int) -> float:
    """CFG strength at ``scale``: ramps linearly from 0 to ``cfg`` over the schedule."""
    return cfg * scale / (num_scales - 1)


def uniforms(seed: int, scale: int, count: int) -> np.ndarray:
    """``count`` uniforms in [0, 1) (float64) for one prompt at one scale; Philox keyed by (seed, scale)."""
    return np.random.Generator(np.random.Philox(key=[seed, scale])).random(count)


def filter_top_k_top_p(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Logits (..., V) with entries outside top-k, then outside the top-p mass, set to -inf."""
    logits = logits.copy()
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = np.partition(logits, vocab - top_k, axis=-1)[..., vocab - top_k : vocab - top_k + 1]
        logits[logits < kth] = -np.inf
    if top_p > 0:
        order = np.argsort(logits, axis=-1, kind="stable")
        ordered = np.take_along_axis(logits, order, axis=-1)
        drop_sorted = np.cumsum(softmax(ordered), axis=-1) <= (1 - top_p)
        drop_sorted[..., -1] = False
        drop = np.empty_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        logits[drop] = -np.inf
    return logits


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def inverse_cdf(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """For probabilities (..., V) and uniforms (...,): the first token whose cumulative mass exceeds u."""
    cdf = np.cumsum(probs, axis=-1)
    target = u * cdf[..., -1]
    return np.minimum((cdf <= target[..., None]).sum(axis=-1), probs.shape[-1] - 1)


class PortableSampler:
    """The portable sampler on host arrays: logits (2B, l, V) float32 -> tokens (B, l) int64."""

    def __init__(self, sampling: SamplingConfig, seeds: Sequence[int], num_scales: int) -> None:
        self.sampling = sampling
        self.seeds = list(seeds)
        self.num_scales = num_scales

    def __call__(self, logits: np.ndarray, scale: int) -> np.ndarray:
        s, b = self.sampling, len(self.seeds)
        t = guidance_scale(s.cfg, scale, self.num_scales)
        rows = np.asarray(logits, dtype=np.float64)
        guided = (1 + t) * rows[:b] - t * rows[b:]
        probs = softmax(filter_top_k_top_p(guided, s.top_k, s.top_p))
        u = np.stack([uniforms(seed, scale, guided.shape[1]) for seed in self.seeds])
        return inverse_cdf(probs, u).astype(np.int64)
