"""Validate one backend against a reference backend: per-graph parity, teacher-forced tokens, PSNR, timings.

Written against the Backend protocol and ScaleLoop only, so the same code compares
TensorRT engines with ONNX Runtime on a GPU machine and torch with ONNX Runtime in CPU tests.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..config import SamplingConfig
from ..model.tables import build_scale_tables
from ..pipeline import ScaleLoop
from ..sampling import apply_cfg, guidance_scale


@dataclass
class Parity:
    """Largest absolute and relative error of one graph's outputs over every call."""

    max_abs: float = 0.0
    max_rel: float = 0.0

    def add(self, ref: torch.Tensor, test: torch.Tensor) -> None:
        ref64, test64 = ref.detach().double().cpu(), test.detach().double().cpu()
        diff = (ref64 - test64).abs().max().item() if ref64.numel() else 0.0
        scale = ref64.abs().max().item() if ref64.numel() else 0.0
        self.max_abs = max(self.max_abs, diff)
        self.max_rel = max(self.max_rel, diff / scale if scale > 0 else diff)


@dataclass
class ValidationReport:
    """What `star-deploy check --backend tensorrt` prints."""

    parity: dict[str, Parity] = field(default_factory=dict)
    token_agreement: list[float] = field(default_factory=list)
    teacher_psnr: float = 0.0
    sampled_psnr: float = 0.0
    sampled_token_match: float = 0.0
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def mean_token_agreement(self) -> float:
        return statistics.fmean(self.token_agreement) if self.token_agreement else 0.0


def psnr(ref: torch.Tensor, test: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]; inf for identical images."""
    mse = (ref.double().cpu() - test.double().cpu()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def graph_parity(ref, test, tokenizer, prompts: Sequence[str], seed: int = 0) -> dict[str, Parity]:
    """Feed both backends identical inputs graph by graph and scale by scale (reference's tokens)."""
    parity = {name: Parity() for name in ("text_encoder", "text_context", "transformer_step", "scale_update", "vq_decoder")}
    toks = tokenizer(list(prompts))
    b = len(prompts)
    hidden, pooled = ref.encode_text(toks.input_ids, toks.attention_mask)
    t_hidden, t_pooled = test.encode_text(toks.input_ids, toks.attention_mask)
    parity["text_encoder"].add(hidden, t_hidden)
    parity["text_encoder"].add(pooled, t_pooled)
    x = ref.begin(hidden[:b], toks.attention_mask[:b], pooled)
    parity["text_context"].add(x, test.begin(hidden[:b], toks.attention_mask[:b], pooled))
    config = ref.config
    f_hat = torch.zeros(b, config.vae.cvae, config.final_side, config.final_side, device=ref.device)
    gen = torch.Generator().manual_seed(seed)
    for k, (side, tables) in enumerate(zip(config.patch_nums, build_scale_tables(config))):
        ref_tables, test_tables = tables.to(ref.device), tables.to(test.device)
        parity["transformer_step"].add(ref.step(k, x, ref_tables), test.step(k, x.to(test.device), test_tables))
        tokens = torch.randint(0, config.transformer.vocab_size, (b, side, side), generator=gen)
        f_ref, x_ref = ref.update(k, tokens.to(ref.device), f_hat, ref_tables)
        f_test, x_test = test.update(k, tokens.to(test.device), f_hat.to(test.device), test_tables)
        parity["scale_update"].add(f_ref, f_test)
        parity["scale_update"].add(x_ref, x_test)
        f_hat, x = f_ref, x_ref
    parity["vq_decoder"].add(ref.decode(f_hat), test.decode(f_hat.to(test.device)))
    return parity


def teacher_forced(ref: ScaleLoop, test: ScaleLoop, prompts: Sequence[str], sampling: SamplingConfig, seeds: Sequence[int]):
    """Reference samples; the tested backend re-runs on the reference's tokens.

    Returns (per-scale agreement of the CFG-guided argmax, image PSNR of the teacher-forced run,
    the reference generation, the teacher-forced generation).
    """
    reference = ref.generate(prompts, sampling, seeds, keep_logits=True)
    forced = test.generate(prompts, sampling, seeds, teacher_tokens=reference.tokens, keep_logits=True)
    k = ref.config.num_scales
    agreement = []
    for scale, (a, b) in enumerate(zip(reference.logits, forced.logits)):
        t = guidance_scale(sampling.cfg, scale, k)
        agreement.append((apply_cfg(a, t).argmax(-1) == apply_cfg(b, t).argmax(-1)).double().mean().item())
    return agreement, psnr(reference.images, forced.images), reference, forced


def stage_timings(pipeline: ScaleLoop, prompts: Sequence[str], sampling: SamplingConfig, runs: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per stage over ``runs`` generations after ``warmup`` ones."""
    for _ in range(warmup):
        pipeline.generate(prompts, sampling)
    samples = [pipeline.generate(prompts, sampling).times for _ in range(max(runs, 1))]
    return {
        "text": statistics.median(s.text for s in samples),
        "steps": statistics.median(sum(s.steps) for s in samples),
        "sampling": statistics.median(s.sampling for s in samples),
        "update": statistics.median(s.update for s in samples),
        "decode": statistics.median(s.decode for s in samples),
        "total": statistics.median(s.total for s in samples),
    }


def validate(
    ref: ScaleLoop, test: ScaleLoop, prompts: Sequence[str], sampling: SamplingConfig, runs: int = 3
) -> ValidationReport:
    """Every comparison of the tested pipeline's backend against the reference's."""
    seeds = [sampling.seed + i for i in range(len(prompts))]
    report = ValidationReport()
    report.parity = graph_parity(ref.backend, test.backend, ref.tokenizer, prompts, sampling.seed)
    report.token_agreement, report.teacher_psnr, reference, _ = teacher_forced(ref, test, prompts, sampling, seeds)
    sampled = test.generate(prompts, sampling, seeds)
    report.sampled_psnr = psnr(reference.images, sampled.images)
    report.sampled_token_match = (reference.tokens == sampled.tokens).double().mean().item()
    if runs > 0:
        report.timings = {
            "reference": stage_timings(ref, prompts, sampling, runs),
            "tested": stage_timings(test, prompts, sampling, runs),
        }
    return report
