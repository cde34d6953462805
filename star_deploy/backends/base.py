"""The interface every runtime implements; the scale loop in pipeline.py is written against it.

A backend works on its own arrays (torch tensors, or numpy arrays for ONNX Runtime); the
loop hands host arrays in (token ids, masks, teacher tokens) and reads results back with
``to_numpy``, so it never depends on torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from ..core.config import SamplingConfig, StarConfig
from ..core.fast import ScalePlan

Array = Any
"""A backend's own array type: a torch tensor, or a numpy array."""


class Clock(Protocol):
    """Stage timing of one generation: points marked in the backend's queue, read after the last one.

    Marking must not wait for the device (on CUDA a mark is an event recorded in the stream),
    so a timed generation queues work as an untimed one does; ``seconds`` may wait once.
    """

    def mark(self) -> Any:
        """A point in the backend's queue of work, after everything queued so far."""
        ...

    def seconds(self, start: Any, end: Any) -> float:
        """Seconds between two marks (waits for ``end`` to be reached)."""
        ...


class HostClock:
    """Marks read ``time.perf_counter`` after ``synchronize``: for runtimes that finish each call before returning."""

    def __init__(self, synchronize: Callable[[], None]) -> None:
        self.synchronize = synchronize

    def mark(self) -> float:
        self.synchronize()
        return time.perf_counter()

    def seconds(self, start: float, end: float) -> float:
        return end - start


class NoClock:
    """Untimed generation: marks cost nothing and every stage reads 0 s."""

    def mark(self) -> None:
        return None

    def seconds(self, start: None, end: None) -> float:
        return 0.0


class Sampler(Protocol):
    """CFG, filtering and one draw per token, for one generation (its seeds are fixed)."""

    def __call__(self, logits: Array, scale: int) -> Array:
        """Raw logits (2B, l, V) of scale ``scale`` -> token ids (B, l)."""
        ...


class Backend(Protocol):
    """One runtime executing the five graphs of STAR.

    Rows of the CFG batch are [cond_0..cond_{B-1}, uncond_0..uncond_{B-1}]. A backend keeps
    the text context and the KV cache between ``begin`` and the last ``step``, and the
    per-scale tables of its schedule (``star_deploy.core.tables``).
    """

    name: str
    config: StarConfig

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[Array, Array]:
        """(2B, 77) ids and mask -> hidden states (2B, 77, T), pooled (2B, T)."""
        ...

    def begin(
        self, hidden: Array, attention_mask: np.ndarray, pooled: Array, plans: tuple[ScalePlan, ...] | None = None
    ) -> Array:
        """Prepare cross-attention of the cond rows, reset the cache; return scale-0 input (2B, 1, C).

        ``plans`` is what each scale of this generation will run (None: exact).
        """
        ...

    def step(self, scale: int, x: Array) -> Array:
        """Run scale ``scale`` on input (2B, l, C), append its K/V; return float32 logits (2B, l, V).

        After ``keep_conditional_rows`` the input, cache and logits hold the B conditional rows.
        """
        ...

    def keep_conditional_rows(self) -> None:
        """Guidance stops here: keep the conditional rows of the cache's prefix, the next steps run them alone."""
        ...

    def pruned_step(self, scale: int, x: Array, kept: int, prior: Array | None) -> tuple[Array, Array]:
        """Run scale ``scale`` on its ``kept`` pivotal tokens (``core/pruning.py``) and append their K/V.

        x (rows, l, C); ``prior`` is the previous scale's residual (rows, p', p', C), None at the
        first scale the pruned-step graph runs. Returns float32 logits (rows, l, V) of every token
        and this scale's residual (rows, p, p, C).
        """
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
        """Wait for queued device work."""
        ...

    def clock(self) -> Clock:
        """How this backend times stages without waiting for the device inside the loop."""
        ...
