"""Pivotal tokens of a pruned scale (cached token pruning, fast modes): one rule, in numpy and in torch.

A scale's pivotal tokens are those whose input deviates most from the scale's mean input (FastVAR's
criterion): squared distance to the mean over the token map, in float64, per prompt. Scores are
rounded to ``1 / SCORE_STEPS`` of their mean before ranking, and ties go to the lower token index:
the tiny differences between two backends' inputs (floating-point rounding) then change the choice
only where a score sits on a rounding edge, and flat regions (equal inputs) rank the same everywhere.
The kept indices are returned ascending; the CFG rows of a prompt keep the same tokens.
"""

from __future__ import annotations

import numpy as np

SCORE_STEPS = 1024


def ranked_scores(x: np.ndarray) -> np.ndarray:
    """Integer scores (B, l) of inputs (B, l, C): deviation from the mean token, rounded (see the module)."""
    x = x.astype(np.float64)
    scores = ((x - x.mean(axis=1, keepdims=True)) ** 2).sum(axis=-1)
    step = scores.mean(axis=1, keepdims=True) / SCORE_STEPS
    return np.floor(scores / np.where(step > 0, step, 1.0)).astype(np.int64)


def kept_index(x: np.ndarray, kept: int, batch: int) -> np.ndarray:
    """Indices (rows, kept) int64, ascending, of the pivotal tokens of inputs x (rows, l, C) with rows = B or 2B."""
    rows, tokens = x.shape[:2]
    if kept >= tokens:
        index = np.broadcast_to(np.arange(tokens, dtype=np.int64), (batch, tokens))
    else:
        order = np.argsort(-ranked_scores(x[:batch]), axis=1, kind="stable")[:, :kept]
        index = np.sort(order, axis=1)
    return np.ascontiguousarray(np.tile(index, (rows // batch, 1)))
