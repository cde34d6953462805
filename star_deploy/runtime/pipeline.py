"""The scale loop, written once for every backend: text -> K scale steps -> sample -> update -> decode.

It runs on host arrays and the backend's own arrays alike and imports no tensor library:
the torch, TensorRT and ONNX Runtime backends all drive this same loop.

On a device backend nothing leaves the device between the text encoder and the decoder:
logits, sampled tokens (the backend's sampler), f_hat and the next input stay backend
arrays, and the loop never waits for the device. Host copies happen only where a caller
asks: ``keep_logits``, a callback reading ``ScaleEvent.tokens`` or a preview, and the
final images and tokens. Stage times come from the backend's clock (CUDA events on a GPU),
read once after the last stage.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..backends.base import Array, Backend, Clock, HostClock, NoClock
from ..core.config import SamplingConfig
from ..core.fast import EXACT, FastMode, scale_plans
from ..core.tokenizer import PromptTokenizer
from ..files.signals import raise_if_interrupted

if TYPE_CHECKING:
    from .memory import CallBudget


@dataclass
class StageTimes:
    """Seconds spent per stage of one generation, by the backend's clock (all 0 for an untimed generation)."""

    text: float = 0.0
    steps: list[float] = field(default_factory=list)
    sampling: float = 0.0
    update: float = 0.0
    decode: float = 0.0

    @property
    def total(self) -> float:
        return self.text + sum(self.steps) + self.sampling + self.update + self.decode


def median_stages(times: Sequence[StageTimes]) -> dict:
    """Per-stage medians over several generations, the steps per scale."""
    med = statistics.median
    return {
        "text": med(t.text for t in times),
        "steps": [med(t.steps[k] for t in times) for k in range(len(times[0].steps))],
        "sampling": med(t.sampling for t in times),
        "update": med(t.update for t in times),
        "decode": med(t.decode for t in times),
    }


@dataclass
class Generation:
    """Images (B, 3, H, W) float32 in [0, 1], tokens (B, L) int64 and, if asked, raw logits per scale.

    ``sampled`` holds what the sampler drew; it differs from ``tokens`` only under teacher forcing.
    """

    images: np.ndarray
    tokens: np.ndarray
    sampled: np.ndarray
    times: StageTimes
    logits: list[np.ndarray] = field(default_factory=list)


@dataclass
class ScaleEvent:
    """What a caller sees after each scale: this scale's tokens and a preview, each copied to the host on demand."""

    scale: int
    num_scales: int
    device_tokens: Array  # (B, p, p), the backend's array (or a host array)
    f_hat: Array
    backend: Backend
    decoded: np.ndarray | None = field(default=None, repr=False)

    @property
    def tokens(self) -> np.ndarray:
        """This scale's token map (B, p, p) int64 on the host (waits for the device)."""
        t = self.device_tokens
        return (t if isinstance(t, np.ndarray) else self.backend.to_numpy(t)).astype(np.int64)

    def preview(self) -> np.ndarray:
        """The coarse image (B, 3, H, W) in [0, 1] decoded from the scales so far (decoded once)."""
        if self.decoded is None:
            self.decoded = self.backend.to_numpy(self.backend.preview(self.f_hat)).astype(np.float32)
        return self.decoded


ScaleCallback = Callable[[ScaleEvent], "bool | None"]
"""Called after every scale; returning False stops the loop and decodes what exists."""


class ScaleLoop:
    """Drives a backend through the schedule; CFG, sampling rules and seeds are decided here only."""

    def __init__(self, backend: Backend, tokenizer: PromptTokenizer, budget: CallBudget | None = None) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = backend.config
        self.budget = budget

    def check_memory(self, batch: int, images: int) -> None:
        """Refuse (MemoryBudgetError) ``images`` images in batches of ``batch`` that would not fit, before any work.

        ``generate`` checks its own batch; a caller generating several batches checks the whole call first.
        """
        if self.budget is not None:
            self.budget.check(batch, images)

    def clock(self, timing: bool) -> Clock:
        if not timing:
            return NoClock()
        clock = getattr(self.backend, "clock", None)
        return clock() if clock is not None else HostClock(self.backend.synchronize)

    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None = None,
        teacher_tokens: np.ndarray | None = None,
        keep_logits: bool = False,
        on_scale: ScaleCallback | None = None,
        timing: bool = True,
        fast: FastMode = EXACT,
    ) -> Generation:
        """Generate one image per prompt; prompt i samples with seed ``seeds[i]`` (default: seed + i).

        ``teacher_tokens`` (B, L) replaces sampled tokens as the next input (teacher forcing):
        the sampler still draws, so draws of two backends stay comparable token by token.
        ``on_scale`` sees a ``ScaleEvent`` after every scale; if it returns False the loop
        stops and the image is decoded from the scales done so far. ``timing=False`` skips
        the stage clock (``Generation.times`` stays zero). ``fast`` approximates as
        ``core/fast.py`` describes: where guidance stops, the steps run the conditional rows
        and the cache keeps them; a pruned scale runs its pivotal tokens and restores the rest
        from the previous scale's residual.
        """
        cfg, backend = self.config, self.backend
        b = len(prompts)
        self.check_memory(b, b)
        plans = scale_plans(cfg, fast)
        seeds = list(seeds) if seeds is not None else [sampling.seed + i for i in range(b)]
        sampling = sampling.clamped(cfg.transformer.vocab_size)
        teacher = None if teacher_tokens is None else np.asarray(teacher_tokens, dtype=np.int64)
        clock = self.clock(timing)
        start = clock.mark()
        toks = self.tokenizer(list(prompts))
        hidden, pooled = backend.encode_text(toks.input_ids, toks.attention_mask)
        x = backend.begin(hidden, toks.attention_mask, pooled, plans=plans)
        text_done = clock.mark()
        sampler = backend.sampler(sampling, seeds)
        f_hat = backend.new_f_hat(b)
        tokens_per_scale, sampled_per_scale, logits_per_scale, marks, offset = [], [], [], [], 0
        event: ScaleEvent | None = None
        residual = None
        for k, side in enumerate(cfg.patch_nums):
            raise_if_interrupted()
            plan = plans[k]
            t0 = clock.mark()
            if not plan.guided:
                if k == 0 or plans[k - 1].guided:
                    backend.keep_conditional_rows()
                x = x[:b]
            if plan.residual:
                prior = residual if residual is None or residual.shape[0] == x.shape[0] else residual[:b]
                logits, residual = backend.pruned_step(k, x, plan.kept, prior)
            else:
                logits = backend.step(k, x)
            t1 = clock.mark()
            if keep_logits:
                logits_per_scale.append(backend.to_numpy(logits).astype(np.float32))
            sampled = sampler(logits, k)
            tokens = sampled if teacher is None else teacher[:, offset : offset + side * side]
            t2 = clock.mark()
            f_hat, x = backend.update(k, tokens.reshape(b, side, side), f_hat)
            marks.append((t0, t1, t2, clock.mark()))
            tokens_per_scale.append(tokens)
            sampled_per_scale.append(sampled)
            offset += side * side
            if on_scale is not None:
                event = ScaleEvent(k, cfg.num_scales, tokens.reshape(b, side, side), f_hat, backend)
                if on_scale(event) is False:
                    break
        t4 = clock.mark()
        if event is not None and event.decoded is not None:
            images = event.decoded  # the caller already decoded the final f_hat as its last preview
        else:
            images = backend.to_numpy(backend.decode(f_hat)).astype(np.float32)
        times = stage_times(clock, start, text_done, marks, t4, clock.mark())
        return Generation(
            images, self._joined(tokens_per_scale), self._joined(sampled_per_scale), times, logits_per_scale
        )

    def _host(self, tokens: Array | np.ndarray) -> np.ndarray:
        return tokens if isinstance(tokens, np.ndarray) else self.backend.to_numpy(tokens)

    def _joined(self, per_scale: list) -> np.ndarray:
        """Token maps of every scale as one (B, L) int64 array, read back once at the end."""
        return np.concatenate([self._host(t).astype(np.int64) for t in per_scale], axis=1)


def stage_times(clock: Clock, start, text_done, marks: list[tuple], decode_start, end) -> StageTimes:
    """Read a generation's marks once it is over: (step start, step end, sampled, updated) per scale."""
    times = StageTimes(text=clock.seconds(start, text_done), decode=clock.seconds(decode_start, end))
    for t0, t1, t2, t3 in marks:
        times.steps.append(clock.seconds(t0, t1))
        times.sampling += clock.seconds(t1, t2)
        times.update += clock.seconds(t2, t3)
    return times
