"""CFG ramp and top-k/top-p sampling: the portable sampler in numpy, shared rules for every backend.

Two samplers exist (``SamplingConfig.sampler``):
- ``portable`` (default): CFG, top-k/top-p and the draw in float64; the draw is an
  exponential race (argmax of p / Exp(1)) whose uniforms come from a keyed integer hash of
  (seed, scale, token, codebook entry), computed the same way in numpy and in torch on any
  device. The same seed gives the same tokens on every backend and device, with or without
  torch, up to near-ties of the backends' logits.
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


def guided(rows: np.ndarray, t: float, batch: int) -> np.ndarray:
    """(1+t)·cond − t·uncond of logits (2B, l, V) [cond; uncond]; conditional logits (B, l, V) as they are.

    B rows are what a step returns where guidance has stopped (fast modes): no guidance there.
    """
    if rows.shape[0] == batch:
        return rows
    return (1 + t) * rows[:batch] - t * rows[batch:]


MASK32 = 0xFFFFFFFF
MIX = (0x85EBCA6B, 0xC2B2AE35)
"""murmur3's fmix32 multipliers."""


def stream_keys(seed: int, scale: int) -> tuple[int, int]:
    """Two 32-bit keys for one prompt at one scale, mixed from (seed, scale)."""
    x = (seed * 0x9E3779B97F4A7C15 + scale * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & ((1 << 64) - 1)
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x ^= x >> 29
    return x & MASK32, x >> 32


def mul32(h, c: int):
    """(h * c) mod 2**32 for int64 arrays h < 2**32, without overflowing 64 bits (numpy and torch alike)."""
    return ((h & 0xFFFF) * c + ((((h >> 16) * c) & 0xFFFF) << 16)) & MASK32


def fmix32(h):
    """murmur3's finalizer on int64 arrays holding 32-bit values."""
    h = h ^ (h >> 16)
    h = mul32(h, MIX[0])
    h = h ^ (h >> 13)
    h = mul32(h, MIX[1])
    return h ^ (h >> 16)


def race_hash(counters, keys: tuple):
    """A 32-bit keyed hash of int64 counters (token index * V + codebook index), numpy or torch arrays.

    ``keys`` are two 32-bit ints, or two int64 arrays that broadcast against ``counters``.
    """
    return fmix32(fmix32(counters ^ keys[0]) ^ keys[1])


def race_uniforms(counters: np.ndarray, keys: tuple[int, int]) -> np.ndarray:
    """Uniforms in (0, 1), float64, of ``race_hash``."""
    return (race_hash(counters, keys).astype(np.float64) + 0.5) / 2.0**32


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


def exponential_race(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """For probabilities (..., V) and uniforms of the same shape: argmax of p / Exp(1), a draw from p.

    Each token's draw perturbs only its own score, so two backends whose probabilities differ
    slightly pick different tokens only where two scores nearly tie.
    """
    return np.argmax(probs / -np.log(u), axis=-1)


def top_k_candidates(logits: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Indices (ascending) and values of each row's top-k entries, or None where a tie at the k-th
    value would keep more than k (the caller then filters the whole row)."""
    vocab = logits.shape[-1]
    idx = np.sort(np.argpartition(logits, vocab - top_k, axis=-1)[..., vocab - top_k :], axis=-1)
    values = np.take_along_axis(logits, idx, axis=-1)
    if np.count_nonzero(logits >= values.min(axis=-1, keepdims=True)) != idx.size:
        return None
    return idx, values


def drop_outside_top_p(values: np.ndarray, idx: np.ndarray, top_p: float) -> np.ndarray:
    """``values`` (..., k) of the entries ``idx`` with those outside the top-p mass set to -inf.

    The same rule as ``filter_top_k_top_p`` on the full row: ties ordered by codebook index.
    """
    order = np.lexsort((idx, values), axis=-1)
    drop_sorted = np.cumsum(softmax(np.take_along_axis(values, order, axis=-1)), axis=-1) <= (1 - top_p)
    drop_sorted[..., -1] = False
    drop = np.empty_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, values)


class PortableSampler:
    """The portable rule on host arrays: logits (2B, l, V) float32 (or (B, l, V), unguided) -> tokens (B, l) int64.

    With top-k on, only each token's k candidates are filtered, hashed and raced: the entries
    outside them have probability zero and can never win, so the draw is the full rule's.
    """

    def __init__(self, sampling: SamplingConfig, seeds: Sequence[int], num_scales: int) -> None:
        self.sampling = sampling
        self.seeds = list(seeds)
        self.num_scales = num_scales

    def __call__(self, logits: np.ndarray, scale: int) -> np.ndarray:
        s, b = self.sampling, len(self.seeds)
        t = guidance_scale(s.cfg, scale, self.num_scales)
        scores = guided(np.asarray(logits, dtype=np.float64), t, b)
        tokens, vocab = scores.shape[1:]
        picked = top_k_candidates(scores, s.top_k) if 0 < s.top_k < vocab else None
        if picked is None:
            idx = np.broadcast_to(np.arange(vocab), scores.shape)
            probs = softmax(filter_top_k_top_p(scores, s.top_k, s.top_p))
        else:
            idx, values = picked
            probs = softmax(drop_outside_top_p(values, idx, s.top_p) if s.top_p > 0 else values)
        counters = np.arange(tokens, dtype=np.int64)[:, None] * vocab + idx
        u = np.stack([race_uniforms(counters[i], stream_keys(seed, scale)) for i, seed in enumerate(self.seeds)])
        return np.take_along_axis(idx, exponential_race(probs, u)[..., None], axis=-1)[..., 0].astype(np.int64)
