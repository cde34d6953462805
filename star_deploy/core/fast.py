"""Fast modes: an opt-in ladder of training-free speed-ups, and the per-scale plan the scale loop follows.

Level 0 is exact generation, the default. Level 1 stops classifier-free guidance after a scale
(Switti, StageVAR): from that scale on, the step runs the conditional rows alone and the KV cache
keeps only their keys and values. Level 2 adds cached token pruning at the last scales (FastVAR):
the transformer runs only each scale's pivotal tokens, the ones whose input deviates most from the
scale's mean, and every other token takes its own input plus the previous scale's residual (what
the transformer stack added), resampled to this scale. Each scale keeps a fixed number of tokens,
so every shape stays static.

A level resolves to knobs per model size (``FAST_PRESETS``); ``cfg_until`` and ``keep`` override
them. ``scale_plans`` turns the knobs into what each scale runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..errors import ConfigError
from .config import StarConfig

LEVELS = (0, 1, 2)


@dataclass(frozen=True)
class FastPreset:
    """A model size's knobs: guidance on the first ``cfg_until`` scales; ``keep`` ratios of the last scales."""

    cfg_until: int | None
    keep: tuple[float, ...]


PRESET_MIN_PRUNED_SIDE = 13
"""Presets prune only scales of at least 13x13 tokens: on the demo model pruning its 8x8 last scale cost
11-14 points of held-out accuracy even keeping 0.875 or 0.9375 of the tokens (docs/fast.md); the published
method prunes scales of 32x32 tokens and more."""

FAST_PRESETS: dict[tuple[int, int], FastPreset] = {
    (128, 4): FastPreset(cfg_until=5, keep=()),
    (256, 16): FastPreset(cfg_until=7, keep=(0.5, 0.25)),
    (256, 30): FastPreset(cfg_until=7, keep=(0.5, 0.25)),
    (512, 30): FastPreset(cfg_until=8, keep=(0.5, 0.25)),
    (1024, 30): FastPreset(cfg_until=11, keep=(0.5, 0.25)),
}
"""Knobs by (resolution, depth). Level 1 uses ``cfg_until``; level 2 all of them (see docs/fast.md).
A model whose scales are all below ``PRESET_MIN_PRUNED_SIDE`` (the demo) prunes nothing: its level 2 is level 1."""


@dataclass(frozen=True)
class FastMode:
    """What a generation approximates: the level and its resolved knobs (level 0: nothing).

    ``cfg_until``: guidance on the first K scales, the conditional rows alone after them (None: every
    scale). ``keep``: the share of tokens the transformer runs at each of the last ``len(keep)``
    scales (1.0: all of them). ``decoder``: the dtype the VQ decoder runs in where a load option
    lowered it (``--decoder-dtype bfloat16``), None otherwise; the tokens do not depend on it.
    """

    level: int = 0
    cfg_until: int | None = None
    keep: tuple[float, ...] = ()
    decoder: str | None = None

    @property
    def exact(self) -> bool:
        return self.level == 0 and self.decoder is None

    def record(self) -> dict:
        """What PNG text chunks, responses and bench JSON record about it."""
        return {"level": self.level, "cfg_until": self.cfg_until, "keep": list(self.keep), "decoder": self.decoder}

    def label(self) -> str:
        """One line: ``exact``, or the level, its knobs and the decoder's dtype."""
        if self.exact:
            return "exact"
        parts = [f"fast {self.level}"]
        if self.cfg_until is not None:
            parts.append(f"cfg-until {self.cfg_until}")
        if self.keep:
            parts.append("keep " + ",".join(f"{r:g}" for r in self.keep))
        if self.decoder is not None:
            parts.append(f"decoder {self.decoder}")
        return ", ".join(parts)


EXACT = FastMode()


def preset_for(config: StarConfig) -> FastPreset | None:
    return FAST_PRESETS.get((config.resolution, config.transformer.depth))


def parse_keep(text: str) -> tuple[float, ...]:
    """``--keep 0.5,0.25`` -> (0.5, 0.25); one clear error for anything else."""
    try:
        ratios = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--keep {text!r}: give keep ratios separated by commas, e.g. --keep 0.5,0.25") from None
    return ratios


def check_level(level: int) -> int:
    if level not in LEVELS:
        raise ConfigError(f"--fast {level}: choose a level in {', '.join(map(str, LEVELS))} (0 is exact)")
    return level


def resolve_fast(
    config: StarConfig,
    level: int = 0,
    cfg_until: int | None = None,
    keep: tuple[float, ...] | None = None,
    decoder: str | None = None,
) -> FastMode:
    """The mode ``level`` means for ``config``, with the knobs given replacing the preset's.

    A knob given alone implies the lowest level it belongs to: ``cfg_until`` 1, ``keep`` 2.
    ``decoder`` is the lowered decoder dtype of the loaded model (None: its own), recorded in the mode.
    """
    mode = resolve_level(config, level, cfg_until, keep)
    return mode if decoder is None else replace(mode, decoder=decoder)


def resolve_level(config: StarConfig, level: int, cfg_until: int | None, keep: tuple[float, ...] | None) -> FastMode:
    """The level and knobs of ``resolve_fast``."""
    check_level(level)
    if level == 1 and keep is not None:
        raise ConfigError("--keep belongs to --fast 2; use --fast 2, or drop it for --fast 1")
    level = max(level, 2 if keep is not None else 1 if cfg_until is not None else 0)
    if level == 0:
        return EXACT
    preset = preset_for(config)
    if preset is None and (keep is None if level == 2 else cfg_until is None):
        knobs = "--keep R1,R2 (and --cfg-until K)" if level == 2 else "--cfg-until K"
        raise ConfigError(
            f"--fast {level}: no preset for this model ({config.resolution} px, depth {config.transformer.depth}); "
            f"give its knobs instead: {knobs}"
        )
    base = preset or FastPreset(cfg_until=None, keep=())
    mode = FastMode(
        level,
        base.cfg_until if cfg_until is None else cfg_until,
        (base.keep if keep is None else tuple(keep)) if level == 2 else (),
    )
    check_mode(mode, config)
    return mode


def check_mode(mode: FastMode, config: StarConfig) -> None:
    """Refuse knobs outside what ``config``'s schedule allows, in one line each."""
    n = config.num_scales
    if mode.cfg_until is not None and not 1 <= mode.cfg_until <= n:
        raise ConfigError(
            f"--cfg-until {mode.cfg_until}: guidance runs on the first K scales; choose K from 1 to {n} "
            f"(this model has {n} scales)"
        )
    if len(mode.keep) >= n:
        raise ConfigError(f"--keep has {len(mode.keep)} ratios; give at most {n - 1}, for the last scales")
    for ratio in mode.keep:
        if not (math.isfinite(ratio) and 0 < ratio <= 1):
            raise ConfigError(f"--keep {ratio:g}: a keep ratio is the share of tokens kept, in (0, 1]")


@dataclass(frozen=True)
class ScalePlan:
    """What one scale runs: both CFG rows or the conditional ones, how many tokens, through which step graph.

    ``residual``: the scale runs the pruned-step graph, which also returns the residual the next
    pruned scale restores its other tokens from (a pruned scale, or the scale just before the first).
    """

    guided: bool = True
    kept: int = 0
    residual: bool = False


def scale_plans(config: StarConfig, mode: FastMode = EXACT) -> tuple[ScalePlan, ...]:
    """The plan of every scale of ``config``'s schedule under ``mode`` (static: the same for every prompt)."""
    sides, n = config.patch_nums, config.num_scales
    cut = n if mode.cfg_until is None else mode.cfg_until
    ratios = (1.0,) * (n - len(mode.keep)) + tuple(mode.keep)
    kept = [max(1, min(s * s, round(r * s * s))) for s, r in zip(sides, ratios)]
    pruned = [k for k in range(n) if kept[k] < sides[k] ** 2]
    first = pruned[0] - 1 if pruned else n
    return tuple(ScalePlan(k < cut, kept[k], k >= first) for k in range(n))


def past_lengths(config: StarConfig, plans: tuple[ScalePlan, ...]) -> list[int]:
    """KV-cache length before each scale: the tokens every earlier scale ran."""
    lengths, total = [], 0
    for plan in plans:
        lengths.append(total)
        total += plan.kept
    return lengths
