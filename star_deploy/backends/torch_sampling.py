"""Samplers on torch tensors, on the backend's device: the official draws and the portable rule."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.config import SamplingConfig
from ..core.sampling import guidance_scale, race_hash, stream_keys


def apply_cfg(logits: torch.Tensor, t: float | torch.Tensor, batch: int) -> torch.Tensor:
    """(1+t)·cond − t·uncond for logits (2B, l, V) [cond; uncond]; conditional logits (B, l, V) as they are."""
    if logits.shape[0] == batch:
        return logits
    return (1 + t) * logits[:batch] - t * logits[batch:]


def on_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host table on ``device`` without a host wait (pinned, non-blocking on CUDA)."""
    table = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return table.to(device)
    return table.pin_memory().to(device, non_blocking=True)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float, stable: bool = False) -> torch.Tensor:
    """Logits (..., V) with entries outside top-k, then outside the top-p mass, set to -inf."""
    logits = logits.clone()
    if top_k > 0:
        kth = logits.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False, stable=stable)
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        logits.masked_fill_(drop_sorted.scatter(sorted_idx.ndim - 1, sorted_idx, drop_sorted), -torch.inf)
    return logits


def sample(logits: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One multinomial draw per row of ``logits`` (l, V) -> token ids (l,), as the official sampler."""
    probs = filter_top_k_top_p(logits, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, replacement=True, generator=generator)[:, 0]


class OfficialSampler:
    """float32 CFG and filtering, ``torch.multinomial`` from one generator per prompt."""

    def __init__(self, sampling: SamplingConfig, seeds: Sequence[int], num_scales: int, device: torch.device) -> None:
        self.sampling = sampling
        self.num_scales = num_scales
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, logits: torch.Tensor, scale: int) -> torch.Tensor:
        s = self.sampling
        guided = apply_cfg(logits.float(), guidance_scale(s.cfg, scale, self.num_scales), len(self.generators))
        return torch.stack([sample(guided[i], s.top_k, s.top_p, g) for i, g in enumerate(self.generators)])


class PortableSampler:
    """The portable rule of ``star_deploy.core.sampling`` in float64, uniforms hashed on the device itself.

    Every per-scale number (the CFG strength, the two hash keys of each prompt) is a device
    tensor made once per generation, so a draw reads no host value: ``draw`` can be captured
    in a CUDA graph and replayed for any seeds and CFG strength (top-k and top-p stay fixed).
    """

    def __init__(self, sampling: SamplingConfig, seeds: Sequence[int], num_scales: int, device: torch.device) -> None:
        self.sampling = sampling
        self.num_scales = num_scales
        self.device = device
        scales = range(num_scales)
        self.guidance = on_device([guidance_scale(sampling.cfg, k, num_scales) for k in scales], torch.float64, device)
        self.keys = on_device([[stream_keys(s, k) for s in seeds] for k in scales], torch.int64, device)

    def __call__(self, logits: torch.Tensor, scale: int) -> torch.Tensor:
        return self.draw(logits, self.guidance[scale], self.keys[scale])

    def draw(self, logits: torch.Tensor, guidance: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Tokens (B, l) from logits (2B, l, V) or (B, l, V), the CFG strength (0-d) and each prompt's keys (B, 2)."""
        s = self.sampling
        guided = apply_cfg(logits.double(), guidance, keys.shape[0])
        probs = filter_top_k_top_p(guided, s.top_k, s.top_p, stable=True).softmax(dim=-1)
        tokens, vocab = probs.shape[1:]
        counters = torch.arange(tokens * vocab, dtype=torch.int64, device=probs.device).view(tokens, vocab)
        hashed = race_hash(counters, (keys[:, 0, None, None], keys[:, 1, None, None]))
        u = (hashed.double() + 0.5) / 2.0**32
        return (probs / -torch.log(u)).argmax(dim=-1)


def make_sampler(sampling: SamplingConfig, seeds: Sequence[int], num_scales: int, device: torch.device):
    """The sampler ``sampling.sampler`` names, on ``device``."""
    cls = OfficialSampler if sampling.sampler == "official" else PortableSampler
    return cls(sampling, seeds, num_scales, device)
