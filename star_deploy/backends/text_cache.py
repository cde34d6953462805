"""The unconditional text row, encoded once: classifier-free guidance pairs every prompt with ""."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Encode = Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]
Concat = Callable[[Sequence[Any]], Any]


class UnconditionalTextCache:
    """Wraps a text encoder of rows [prompts..., "" x B]: encodes the prompts, reuses the "" row.

    The text encoder reads each row on its own (no cross-row operation), so the cached row is
    the row a batched call would compute; on CPU the two are bitwise equal (tested). A batch
    whose second half is not one repeated row (a caller's own rows) is encoded whole.
    """

    def __init__(self, encode: Encode, concat: Concat) -> None:
        self.encode, self.concat = encode, concat
        self.key: bytes | None = None
        self.row: tuple[Any, Any] | None = None

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[Any, Any]:
        b = input_ids.shape[0] // 2
        unconditional = np.concatenate([input_ids[b:], attention_mask[b:]], axis=1)
        if b == 0 or input_ids.shape[0] != 2 * b or not (unconditional == unconditional[:1]).all():
            return self.encode(input_ids, attention_mask)
        key = unconditional[0].tobytes()
        if self.key != key:
            self.row = self.encode(input_ids[b : b + 1], attention_mask[b : b + 1])
            self.key = key
        hidden, pooled = self.encode(input_ids[:b], attention_mask[:b])
        return self.concat([hidden, *[self.row[0]] * b]), self.concat([pooled, *[self.row[1]] * b])
