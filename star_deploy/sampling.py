"""CFG ramp and top-k/top-p sampling, exactly as the official sampler computes them."""

from __future__ import annotations

import torch


def guidance_scale(cfg: float, scale: int, num_scales: int) -> float:
    """CFG strength at ``scale``: ramps linearly from 0 to ``cfg`` over the schedule."""
    return cfg * scale / (num_scales - 1)


def apply_cfg(logits: torch.Tensor, t: float) -> torch.Tensor:
    """(1+t)·cond − t·uncond for logits (2B, l, V) with rows [cond; uncond]."""
    b = logits.shape[0] // 2
    return (1 + t) * logits[:b] - t * logits[b:]


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits (..., V) with entries outside top-k, then outside the top-p mass, set to -inf."""
    logits = logits.clone()
    if top_k > 0:
        kth = logits.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        logits.masked_fill_(drop_sorted.scatter(sorted_idx.ndim - 1, sorted_idx, drop_sorted), -torch.inf)
    return logits


def sample(logits: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One multinomial draw per row of ``logits`` (l, V) -> token ids (l,)."""
    probs = filter_top_k_top_p(logits, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, replacement=True, generator=generator)[:, 0]
