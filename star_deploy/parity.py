"""Measured agreement between two backends: per-graph errors and end-to-end fidelity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from .backends.base import Backend
from .config import SamplingConfig
from .model.tables import build_scale_tables
from .model.text import PromptTokenizer
from .pipeline import ScaleLoop


@dataclass
class ErrorStats:
    """Largest and mean absolute difference over every comparison of one graph."""

    max_abs: float = 0.0
    mean_abs: float = 0.0
    count: int = 0

    def add(self, ref: torch.Tensor, test: torch.Tensor) -> None:
        diff = (ref.detach().double().cpu() - test.detach().double().cpu()).abs()
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.mean_abs = (self.mean_abs * self.count + float(diff.mean())) / (self.count + 1)
        self.count += 1


def graph_parity(ref: Backend, test: Backend, tokenizer: PromptTokenizer, prompts: Sequence[str], seed: int = 0) -> dict[str, ErrorStats]:
    """Feed both backends the reference's inputs graph by graph, scale by scale; compare outputs.

    Tokens between scales are random (seeded), so every scale sees realistic, identical inputs.
    """
    stats = {name: ErrorStats() for name in ("text_encoder", "text_context", "transformer_step", "kv_cache", "scale_update", "vq_decoder")}
    config, b = ref.config, len(prompts)
    toks = tokenizer(list(prompts))
    hidden, pooled = ref.encode_text(toks.input_ids, toks.attention_mask)
    for r, t in zip((hidden, pooled), test.encode_text(toks.input_ids, toks.attention_mask)):
        stats["text_encoder"].add(r, t)
    x = ref.begin(hidden[:b], toks.attention_mask[:b], pooled)
    stats["text_context"].add(x, test.begin(hidden[:b], toks.attention_mask[:b], pooled))
    gen = torch.Generator().manual_seed(seed)
    f_hat = torch.zeros(b, config.vae.cvae, config.final_side, config.final_side, device=ref.device)
    for k, (side, tables) in enumerate(zip(config.patch_nums, build_scale_tables(config))):
        stats["transformer_step"].add(ref.step(k, x, tables.to(ref.device)), test.step(k, x, tables.to(test.device)))
        tokens = torch.randint(0, config.transformer.vocab_size, (b, side, side), generator=gen)
        f_ref, x_ref = ref.update(k, tokens, f_hat, tables.to(ref.device))
        f_test, x_test = test.update(k, tokens, f_hat, tables.to(test.device))
        stats["scale_update"].add(f_ref, f_test)
        stats["scale_update"].add(x_ref, x_test)
        f_hat, x = f_ref, x_ref
    for r, t in zip(ref.cache.keys + ref.cache.values, test.cache.keys + test.cache.values):
        stats["kv_cache"].add(r[: ref.cache.length], t[: test.cache.length])
    stats["vq_decoder"].add(ref.decode(f_hat), test.decode(f_hat))
    return stats


def psnr(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (inf when identical)."""
    mse = float(((ref.double() - test.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@dataclass
class Fidelity:
    """End-to-end agreement of a test pipeline with a reference at the same seeds."""

    teacher_forced_token_agreement: float
    teacher_forced_psnr_db: float
    free_run_token_agreement: float
    free_run_psnr_db: float
    logits_max_abs: float
    per_prompt: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def fidelity(ref: ScaleLoop, test: ScaleLoop, prompts: Sequence[str], sampling: SamplingConfig, seeds: Sequence[int]) -> Fidelity:
    """Teacher-forced (both fed the reference's tokens, both sample with the same generators)
    and free-running agreement of ``test`` with ``ref``."""
    free_ref = ref.generate(prompts, sampling, seeds, keep_logits=True)
    forced = test.generate(prompts, sampling, seeds, teacher_tokens=free_ref.tokens, keep_logits=True)
    free_test = test.generate(prompts, sampling, seeds)
    logits_err = max(float((a - b).abs().max()) for a, b in zip(free_ref.logits, forced.logits))
    per_prompt = [
        {
            "prompt": p,
            "seed": s,
            "teacher_forced_token_agreement": float((forced.sampled[i] == free_ref.tokens[i]).float().mean()),
            "free_run_psnr_db": psnr(free_ref.images[i], free_test.images[i]),
        }
        for i, (p, s) in enumerate(zip(prompts, seeds))
    ]
    return Fidelity(
        teacher_forced_token_agreement=float((forced.sampled == free_ref.tokens).float().mean()),
        teacher_forced_psnr_db=psnr(free_ref.images, forced.images),
        free_run_token_agreement=float((free_test.tokens == free_ref.tokens).float().mean()),
        free_run_psnr_db=psnr(free_ref.images, free_test.images),
        logits_max_abs=logits_err,
        per_prompt=per_prompt,
    )
