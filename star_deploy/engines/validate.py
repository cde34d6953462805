"""Validate one backend against a reference backend: per-graph parity, teacher-forced tokens, PSNR, timings.

Written against the Backend protocol, ScaleLoop and star_deploy.evaluation only, so the same code compares
TensorRT engines with ONNX Runtime on a GPU machine and torch with ONNX Runtime in CPU tests.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import SamplingConfig
from ..evaluation import ErrorStats, graph_parity, guided_argmax_agreement, psnr, token_agreement
from ..pipeline import ScaleLoop


@dataclass
class ValidationReport:
    """What `star-deploy check --backend tensorrt` prints."""

    parity: dict[str, ErrorStats] = field(default_factory=dict)
    token_agreement: list[float] = field(default_factory=list)
    teacher_psnr: float = 0.0
    sampled_psnr: float = 0.0
    sampled_token_match: float = 0.0
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def mean_token_agreement(self) -> float:
        return statistics.fmean(self.token_agreement) if self.token_agreement else 0.0


def teacher_forced(
    ref: ScaleLoop, test: ScaleLoop, prompts: Sequence[str], sampling: SamplingConfig, seeds: Sequence[int]
):
    """Reference samples; the tested backend re-runs on the reference's tokens.

    Returns (per-scale agreement of the CFG-guided argmax, image PSNR of the teacher-forced run,
    the reference generation, the teacher-forced generation).
    """
    reference = ref.generate(prompts, sampling, seeds, keep_logits=True)
    forced = test.generate(prompts, sampling, seeds, teacher_tokens=reference.tokens, keep_logits=True)
    return (
        guided_argmax_agreement(reference, forced, sampling),
        psnr(reference.images, forced.images),
        reference,
        forced,
    )


def stage_timings(
    pipeline: ScaleLoop, prompts: Sequence[str], sampling: SamplingConfig, runs: int, warmup: int = 1
) -> dict[str, float]:
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
    report.sampled_token_match = token_agreement(reference.tokens, sampled.tokens)
    if runs > 0:
        report.timings = {
            "reference": stage_timings(ref, prompts, sampling, runs),
            "tested": stage_timings(test, prompts, sampling, runs),
        }
    return report
