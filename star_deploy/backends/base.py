"""The interface every runtime implements; the scale loop in pipeline.py is written against it."""

from __future__ import annotations

from typing import Protocol

import torch

from ..config import StarConfig
from ..model.tables import ScaleTables


class Backend(Protocol):
    """One runtime executing the five graphs of STAR.

    Rows of the CFG batch are [cond_0..cond_{B-1}, uncond_0..uncond_{B-1}]. A backend keeps
    the text context and the KV cache between ``begin`` and the last ``step``.
    """

    name: str
    config: StarConfig
    device: torch.device

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(2B, 77) ids and mask -> hidden states (2B, 77, T), pooled (2B, T)."""
        ...

    def begin(self, hidden: torch.Tensor, attention_mask: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Prepare cross-attention of the cond rows, reset the cache; return scale-0 input (2B, 1, C)."""
        ...

    def step(self, scale: int, x: torch.Tensor, tables: ScaleTables) -> torch.Tensor:
        """Run scale ``scale`` on input (2B, l, C), append its K/V; return float32 logits (2B, l, V)."""
        ...

    def update(
        self, scale: int, tokens: torch.Tensor, f_hat: torch.Tensor, tables: ScaleTables
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add a token map (B, p, p) to f_hat (B, Cvae, P, P); return (f_hat, next input (2B, l', C))."""
        ...

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, Cvae, P, P) -> float32 image (B, 3, H, W) in [0, 1]."""
        ...

    def preview(self, f_hat: torch.Tensor) -> torch.Tensor:
        """``decode`` for a coarse f_hat between scales, leaving the final decode's state alone."""
        ...
