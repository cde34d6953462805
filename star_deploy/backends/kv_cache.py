"""The static KV cache of the torch-tensor backends (PyTorch reference, TensorRT): allocated once per batch size."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.config import StarConfig


class KVCache:
    """Keys and values of every layer for the whole schedule, (L, rows, H, D) each, allocated once."""

    def __init__(
        self, config: StarConfig, rows: int, dtype: torch.dtype, device: torch.device, empty: Callable = torch.empty
    ) -> None:
        """``empty(shape, dtype, device)`` allocates each layer's buffer (TensorRT: 256-byte aligned)."""
        t = config.transformer
        shape = (config.total_tokens, rows, t.heads, t.head_dim)
        self.keys = [empty(shape, dtype=dtype, device=device) for _ in range(t.depth)]
        self.values = [empty(shape, dtype=dtype, device=device) for _ in range(t.depth)]
        self.length = 0

    @property
    def rows(self) -> int:
        return self.keys[0].shape[1]

    def past(self) -> list[torch.Tensor]:
        """Views of the filled prefix: keys of every layer, then values."""
        return [k[: self.length] for k in self.keys] + [v[: self.length] for v in self.values]

    def write(self, new: list[torch.Tensor]) -> None:
        """Write this scale's keys then values (l, rows, H, D) after the prefix, without advancing."""
        count = new[0].shape[0]
        for dst, src in zip(self.keys + self.values, new):
            dst[self.length : self.length + count].copy_(src)
