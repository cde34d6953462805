"""Pivotal tokens on torch tensors, on the backend's device: the rule of ``star_deploy.core.pruning``."""

from __future__ import annotations

import torch

from ..core.pruning import SCORE_STEPS


def ranked_scores(x: torch.Tensor) -> torch.Tensor:
    """Integer scores (B, l) of inputs (B, l, C), as ``core.pruning.ranked_scores``."""
    x = x.double()
    scores = (x - x.mean(dim=1, keepdim=True)).square().sum(dim=-1)
    step = scores.mean(dim=1, keepdim=True) / SCORE_STEPS
    return torch.floor(scores / torch.where(step > 0, step, torch.ones_like(step))).long()


def kept_index(x: torch.Tensor, kept: int, batch: int) -> torch.Tensor:
    """Indices (rows, kept) int64, ascending, of the pivotal tokens of x (rows, l, C), as ``core.pruning``."""
    rows, tokens = x.shape[:2]
    if kept >= tokens:
        index = torch.arange(tokens, device=x.device).expand(batch, tokens)
    else:
        order = torch.argsort(-ranked_scores(x[:batch]), dim=1, stable=True)[:, :kept]
        index = order.sort(dim=1).values
    return index.repeat(rows // batch, 1).contiguous()
