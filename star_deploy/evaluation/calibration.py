"""Calibration data for static quantization: decoder inputs of images generated with an fp32 artefact folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.config import SamplingConfig

CALIBRATION_PROMPTS = ("a red circle on a blue background", "a photo of a mountain lake at dawn")
"""Two images: MinMax calibration holds every intermediate tensor of every image (several GB per 256-px image)."""


def calibration_latents(folder: Path, prompts: Sequence[str] = CALIBRATION_PROMPTS) -> list[np.ndarray]:
    """The decoder inputs (``f_hat``, one image each) of ``prompts`` generated with the fp32 graphs of ``folder``."""
    from ..artifacts.manifest import load_manifest
    from ..backends.ort_backend import OrtBackend
    from ..core.tokenizer import PromptTokenizer
    from ..runtime.pipeline import ScaleLoop

    manifest = load_manifest(folder)
    loop = ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))
    latents: list[np.ndarray] = []

    def keep_last(event) -> None:
        if event.scale == event.num_scales - 1:
            latents.extend(np.split(np.asarray(event.backend.to_numpy(event.f_hat), np.float32), len(prompts)))

    loop.generate(list(prompts), SamplingConfig(), seeds=list(range(len(prompts))), on_scale=keep_last, timing=False)
    return latents
