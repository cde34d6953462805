"""The scale loop, written once for every backend: text -> K scale steps -> sample -> update -> decode."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .backends.base import Backend
from .config import SamplingConfig
from .model.tables import build_scale_tables
from .model.text import PromptTokenizer
from .sampling import apply_cfg, guidance_scale, sample


@dataclass
class StageTimes:
    """Seconds spent per stage of one generation (device-synchronized)."""

    text: float = 0.0
    steps: list[float] = field(default_factory=list)
    sampling: float = 0.0
    update: float = 0.0
    decode: float = 0.0

    @property
    def total(self) -> float:
        return self.text + sum(self.steps) + self.sampling + self.update + self.decode


@dataclass
class Generation:
    """Images (B, 3, H, W) in [0, 1], tokens (B, L) and, if asked, raw logits per scale.

    ``sampled`` holds what the sampler drew; it differs from ``tokens`` only under teacher forcing.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    sampled: torch.Tensor
    times: StageTimes
    logits: list[torch.Tensor] = field(default_factory=list)


@dataclass
class ScaleEvent:
    """What a caller sees after each scale: the tokens drawn so far and a preview on demand."""

    scale: int
    num_scales: int
    tokens: torch.Tensor  # (B, p, p) token map of this scale
    f_hat: torch.Tensor
    decode: Callable[[torch.Tensor], torch.Tensor]

    def preview(self) -> torch.Tensor:
        """The coarse image (B, 3, H, W) in [0, 1] decoded from the scales so far."""
        return self.decode(self.f_hat).float().cpu()


ScaleCallback = Callable[[ScaleEvent], "bool | None"]
"""Called after every scale; returning False stops the loop and decodes what exists."""


class ScaleLoop:
    """Drives a backend through the schedule; sampling, CFG and seeds live here only."""

    def __init__(self, backend: Backend, tokenizer: PromptTokenizer) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = backend.config
        self.tables = [t.to(backend.device) for t in build_scale_tables(self.config)]

    def _sync(self) -> float:
        if self.backend.device.type == "cuda":
            torch.cuda.synchronize(self.backend.device)
        return time.perf_counter()

    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None = None,
        teacher_tokens: torch.Tensor | None = None,
        keep_logits: bool = False,
        on_scale: ScaleCallback | None = None,
    ) -> Generation:
        """Generate one image per prompt; prompt i draws from its own generator seeded ``seeds[i]``.

        ``on_scale`` sees a ``ScaleEvent`` after every scale; if it returns False the loop stops
        and the image is decoded from the scales done so far.

        ``teacher_tokens`` (B, L) replaces sampled tokens as the next input (teacher forcing):
        the sampler still draws, so draws of two backends stay comparable token by token.
        """
        cfg = self.config
        b = len(prompts)
        seeds = list(seeds) if seeds is not None else [sampling.seed + i for i in range(b)]
        sampling = sampling.clamped(cfg.transformer.vocab_size)
        times = StageTimes()
        start = self._sync()
        toks = self.tokenizer(list(prompts))
        hidden, pooled = self.backend.encode_text(toks.input_ids, toks.attention_mask)
        x = self.backend.begin(hidden[:b], toks.attention_mask[:b], pooled)
        times.text = self._sync() - start
        sample_device = self.backend.device
        generators = [torch.Generator(device=sample_device).manual_seed(s) for s in seeds]
        f_hat = torch.zeros(b, cfg.vae.cvae, cfg.final_side, cfg.final_side, device=self.backend.device)
        all_tokens, all_sampled, all_logits, offset = [], [], [], 0
        for k, side in enumerate(cfg.patch_nums):
            t0 = self._sync()
            logits = self.backend.step(k, x, self.tables[k])
            t1 = self._sync()
            if keep_logits:
                all_logits.append(logits.float().cpu())
            guided = apply_cfg(logits.float(), guidance_scale(sampling.cfg, k, cfg.num_scales))
            sampled = torch.stack([sample(guided[i], sampling.top_k, sampling.top_p, generators[i]) for i in range(b)])
            tokens = sampled
            if teacher_tokens is not None:
                tokens = teacher_tokens[:, offset : offset + side * side].to(sampled.device)
            t2 = self._sync()
            f_hat, x = self.backend.update(k, tokens.view(b, side, side), f_hat, self.tables[k])
            t3 = self._sync()
            times.steps.append(t1 - t0)
            times.sampling += t2 - t1
            times.update += t3 - t2
            all_tokens.append(tokens.cpu())
            all_sampled.append(sampled.cpu())
            offset += side * side
            if on_scale is not None:
                event = ScaleEvent(k, cfg.num_scales, tokens.view(b, side, side), f_hat, self.backend.preview)
                if on_scale(event) is False:
                    break
        t4 = self._sync()
        images = self.backend.decode(f_hat).float().cpu()
        times.decode = self._sync() - t4
        return Generation(images, torch.cat(all_tokens, dim=1), torch.cat(all_sampled, dim=1), times, all_logits)
