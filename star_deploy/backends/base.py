"""The interface every runtime implements; the scale loop in pipeline.py is written against it.

A backend works on its own arrays (torch tensors, or numpy arrays for ONNX Runtime); the
loop hands host arrays in (token ids, masks, teacher tokens) and reads results back with
``to_numpy``, so it never depends on torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ..config import SamplingConfig, StarConfig

Array = Any
"""A backend's own array type: a torch tensor, or a numpy array."""


class Sampler(Protocol):
    """CFG, filtering and one draw per token, for one generation (its seeds are fixed)."""

    def __call__(self, logits: Array, scale: int) -> Array:
        """Raw logits (2B, l, V) of scale ``scale`` -> token ids (B, l)."""
        ...


class Backend(Protocol):
    """One runtime executing the five graphs of STAR.

    Rows of the CFG batch are [cond_0..cond_{B-1}, uncond_0..uncond_{B-1}]. A backend keeps
    the text context and the KV cache between ``begin`` and the last ``step``, and the
    per-scale tables of its schedule (``star_deploy.tables``).
    """

    name: str
    config: StarConfig

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[Array, Array]:
        """(2B, 77) ids and mask -> hidden states (2B, 77, T), pooled (2B, T)."""
        ...

    def begin(self, hidden: Array, attention_mask: np.ndarray, pooled: Array) -> Array:
        """Prepare cross-attention of the cond rows, reset the cache; return scale-0 input (2B, 1, C)."""
        ...

    def step(self, scale: int, x: Array) -> Array:
        """Run scale ``scale`` on input (2B, l, C), append its K/V; return float32 logits (2B, l, V)."""
        ...

    def update(self, scale: int, tokens: Array | np.ndarray, f_hat: Array) -> tuple[Array, Array]:
        """Add a token map (B, p, p) to f_hat (B, Cvae, P, P); return (f_hat, next input (2B, l', C))."""
        ...

    def decode(self, f_hat: Array) -> Array:
        """f_hat (B, Cvae, P, P) -> float32 image (B, 3, H, W) in [0, 1]."""
        ...

    def preview(self, f_hat: Array) -> Array:
        """``decode`` for a coarse f_hat between scales, leaving the final decode's state alone."""
        ...

    def new_f_hat(self, batch: int) -> Array:
        """Zeros (B, Cvae, P, P) float32: f_hat before the first scale."""
        ...

    def sampler(self, sampling: SamplingConfig, seeds: Sequence[int]) -> Sampler:
        """The sampler ``sampling.sampler`` names, working on this backend's arrays."""
        ...

    def to_numpy(self, array: Array) -> np.ndarray: ...

    def asarray(self, array: np.ndarray) -> Array:
        """A host array as this backend's own array type, on its device."""
        ...

    def cached_kv(self) -> list[np.ndarray]:
        """The filled KV-cache prefix: keys of every layer, then values (parity checks)."""
        ...

    def synchronize(self) -> None:
        """Wait for queued device work (timings)."""
        ...
