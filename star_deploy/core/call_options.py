"""The options of one generation call, typed and checked once: seeds, sampler settings, batch size, fast mode.

``StarPipeline.__call__`` builds one from its keyword arguments; a field with a ``CliOption`` is also an
option of ``run`` and ``bench`` (``star_deploy.commands.options``). Unset sampler settings take the
model's defaults (``sampling``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any

import numpy as np

from ..errors import ConfigError
from . import arguments
from .arguments import Checked, CliOption
from .config import SAMPLERS, SamplingConfig, StarConfig
from .fast import FastMode, check_level, parse_keep, resolve_fast

log = logging.getLogger("star_deploy")


def _seed(name: str, value: Any) -> Any:
    """An integer seed or a list of them, each in range (a list's length is checked against the images later)."""
    count = len(value) if isinstance(value, (list, tuple, np.ndarray)) else 1
    arguments.seeds(value, count)
    return value


def _optional_real(name: str, value: Any) -> float | None:
    return None if value is None else arguments.real(name, value)


def _sampler(name: str, value: Any) -> str:
    return arguments.one_of(name, value, SAMPLERS)


def _fast_level(name: str, value: Any) -> int:
    return check_level(arguments.integer(name, value))


def _keep(name: str, value: Any) -> tuple[float, ...] | None:
    """Keep ratios: ``"0.5,0.25"`` (the command line) or a sequence of numbers; each in (0, 1] (``check_mode``)."""
    if value is None:
        return None
    ratios = parse_keep(value) if isinstance(value, str) else value
    if not isinstance(ratios, (list, tuple, np.ndarray)):
        raise ConfigError(f"{name} must be keep ratios such as (0.5, 0.25), got {type(value).__name__} {value!r}")
    return tuple(arguments.real(name, r) for r in ratios)


@dataclass(frozen=True)
class CallOptions:
    """How one call generates: image i uses seed ``seed + i`` (or ``seed[i]``); unset sampler settings are the
    model's defaults; ``batch_size`` images at a time (None: all)."""

    seed: Annotated[
        int | Sequence[int], Checked(_seed), CliOption("Seed of the first prompt; prompt i uses seed+i.", int)
    ] = 0
    guidance_scale: Annotated[
        float | None,
        Checked(_optional_real),
        CliOption(
            "Classifier-free guidance strength (ramps from 0 over the scales). Default: the artefacts' (recorded "
            "at export), else the official 4.0.",
            flag="--cfg",
        ),
    ] = None
    top_k: Annotated[
        int | None,
        Checked(arguments.optional_integer),
        CliOption(
            "Keep the k most likely tokens (0: off). Default: the artefacts', else the official 600; capped at the "
            "codebook size."
        ),
    ] = None
    top_p: Annotated[
        float | None,
        Checked(_optional_real),
        CliOption("Nucleus sampling mass in (0, 1]. Default: the artefacts', else 0.8."),
    ] = None
    batch_size: Annotated[
        int | None,
        Checked(functools.partial(arguments.optional_integer, minimum=1)),
        CliOption("Prompts generated together.", int, default=1),
    ] = None
    sampler: Annotated[
        str,
        Checked(_sampler),
        CliOption(
            "portable: a seed gives the same tokens on every backend and device; official: the official code's "
            "torch.Generator draws (CPU: the official images)."
        ),
    ] = "portable"
    fast: Annotated[
        int,
        Checked(_fast_level),
        CliOption(
            "Fast mode: 0 exact (default); 1 guidance stops after the model's preset scale; 2 also prunes tokens at "
            "the last scales. Images of levels 1 and 2 are approximations, recorded as such."
        ),
    ] = 0
    cfg_until: Annotated[
        int | None,
        Checked(arguments.optional_integer),
        CliOption("Fast modes: guidance on the first K scales only (implies --fast 1)."),
    ] = None
    keep: Annotated[
        tuple[float, ...] | None,
        Checked(_keep),
        CliOption(
            "Fast modes: share of tokens run at each of the last scales, e.g. 0.5,0.25 (implies --fast 2).", str | None
        ),
    ] = None

    def __post_init__(self) -> None:
        arguments.check_fields(self)
        self.sampling(SamplingConfig())  # the ranges (cfg, top-k, top-p), checked by SamplingConfig

    @property
    def first_seed(self) -> int:
        """The seed of the first image (0 for an empty list, which ``seeds`` refuses)."""
        seeds = list(self.seed) if isinstance(self.seed, (list, tuple, np.ndarray)) else [self.seed]
        return int(seeds[0]) if seeds else 0

    def seeds(self, count: int) -> list[int]:
        """The seed of each of ``count`` images."""
        return arguments.seeds(self.seed, count)

    def fast_mode(self, config: StarConfig, decoder: str | None = None) -> FastMode:
        """The fast mode these knobs mean for ``config`` (the preset's, overridden by those given; checked).

        ``decoder``: the loaded model's lowered decoder dtype (``StarPipeline.decoder``), recorded in the mode.
        """
        return resolve_fast(config, self.fast, self.cfg_until, self.keep, decoder)

    def sampling(self, defaults: SamplingConfig, vocab_size: int | None = None) -> SamplingConfig:
        """The settings given, ``defaults`` for the rest; top-k capped at the codebook (with a warning if given)."""
        settings = replace(
            defaults,
            cfg=defaults.cfg if self.guidance_scale is None else self.guidance_scale,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            sampler=self.sampler,
            seed=self.first_seed,
        )
        if vocab_size is None:
            return settings
        if self.top_k is not None and self.top_k > vocab_size:
            log.warning("top-k %d exceeds the codebook size; using %d", self.top_k, vocab_size)
        return settings.clamped(vocab_size)
