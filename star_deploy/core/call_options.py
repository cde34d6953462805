"""The options of one generation call, typed and checked once: seeds, sampler settings, batch size.

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

from . import arguments
from .arguments import Checked, CliOption
from .config import SAMPLERS, SamplingConfig

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
