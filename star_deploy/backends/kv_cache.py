"""The static KV cache of the torch-tensor backends (PyTorch reference, TensorRT): allocated once per batch size."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.config import StarConfig


class KVCache:
    """Keys and values of every layer for the whole schedule, allocated once as one buffer.

    ``storage`` is (2·depth, L·rows·H·D): each layer's region holds (L, rows, H, D), keys of every
    layer first, then values. Where guidance stops (fast modes) ``keep_conditional_rows``
    compacts the filled prefix to the B conditional rows in place; from then on each layer is
    viewed as (positions, B, H, D) at the start of its region, so prefixes and slots stay
    contiguous. ``reset`` returns to every row for the next generation.
    """

    def __init__(
        self, config: StarConfig, rows: int, dtype: torch.dtype, device: torch.device, empty: Callable = torch.empty
    ) -> None:
        """``empty(shape, dtype, device)`` allocates the buffer (TensorRT: 256-byte aligned)."""
        t = config.transformer
        self.depth, self.row_size = t.depth, t.heads * t.head_dim
        self.head_shape = (t.heads, t.head_dim)
        self.capacity = rows
        self.storage = empty((2 * t.depth, config.total_tokens * rows * self.row_size), dtype=dtype, device=device)
        self.rows = rows
        self.length = 0
        self._views = self._layer_views()

    def _layer_views(self) -> list[torch.Tensor]:
        return list(self.storage.view(2 * self.depth, -1, self.rows, *self.head_shape).unbind(0))

    @property
    def keys(self) -> list[torch.Tensor]:
        return self._views[: self.depth]

    @property
    def values(self) -> list[torch.Tensor]:
        return self._views[self.depth :]

    def reset(self) -> None:
        """Empty, every row in use: the state a generation starts from."""
        self.length = 0
        if self.rows != self.capacity:
            self.rows = self.capacity
            self._views = self._layer_views()

    def keep_conditional_rows(self) -> None:
        """Keep only the first half of the rows (the conditional ones) of the filled prefix, in place.

        Position s moves from element s·rows·R of its layer's region to s·(rows/2)·R. Chunks of
        positions [s, 2s) never overlap their own sources, and their targets lie before every
        source still to move: about log2(length) copies compact every layer, with no scratch memory.
        """
        if self.rows != self.capacity:
            raise RuntimeError("the cache already holds the conditional rows alone")
        keep = self.rows // 2
        positions = self.storage.view(2 * self.depth, -1, self.rows * self.row_size)
        flat = self.storage.view(2 * self.depth, -1, keep * self.row_size)
        start = 1
        while start < self.length:
            end = min(2 * start, self.length)
            flat[:, start:end].copy_(positions[:, start:end, : keep * self.row_size])
            start = end
        self.rows = keep
        self._views = self._layer_views()

    def past(self) -> list[torch.Tensor]:
        """Views of the filled prefix: keys of every layer, then values."""
        return [layer[: self.length] for layer in self._views]

    def write(self, new: list[torch.Tensor]) -> None:
        """Write this scale's keys then values (l, rows, H, D) after the prefix, without advancing."""
        count = new[0].shape[0]
        for dst, src in zip(self._views, new):
            dst[self.length : self.length + count].copy_(src)
