"""The one place the server touches the model: load a pipeline, generate images and previews."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import SamplingConfig

PreviewCallback = Callable[[int, int, dict[int, np.ndarray]], None]
"""Called after each scale with (scale, num_scales, {job index: coarse image (H, W, 3) uint8})."""


@dataclass(frozen=True)
class ModelSpec:
    """Which pipeline a replica loads: backend, weights or artefact folder, device."""

    backend: str = "torch"
    weights: str | None = None
    artifacts: str | None = None
    device: str | None = None
    dtype: str = "float32"
    threads: int = 0


@dataclass(frozen=True)
class Job:
    """One image to generate: prompt, seed and sampler settings (top_k None: the official default)."""

    prompt: str
    seed: int = 0
    cfg: float = 4.0
    top_k: int | None = None
    top_p: float = 0.8

    def settings(self) -> tuple[float, int | None, float]:
        return (self.cfg, self.top_k, self.top_p)


@dataclass
class _Recorder:
    """A backend wrapper that keeps the f_hat of the last scale update, for previews."""

    inner: Any
    f_hat: torch.Tensor | None = field(default=None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def update(self, scale, tokens, f_hat, tables):  # noqa: ANN001, ANN201 - the Backend signature
        self.f_hat, x = self.inner.update(scale, tokens, f_hat, tables)
        return self.f_hat, x


def to_pixels(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) floats in [0, 1] -> B arrays (H, W, 3) uint8, rounded to nearest."""
    batch = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(batch)


class ImageModel:
    """A loaded STAR pipeline; thread-safe (one generation at a time)."""

    def __init__(self, spec: ModelSpec) -> None:
        from ..backends.factory import create_backend, default_device, needs_artifacts
        from ..commands.common import load_model
        from ..commands.run import open_artifacts
        from ..model.text import PromptTokenizer
        from ..pipeline import StarPipeline

        self.spec = spec
        device = default_device(spec.backend, spec.device)
        if needs_artifacts(spec.backend):
            artifacts = Path(spec.artifacts) if spec.artifacts else None
            manifest = open_artifacts(spec.backend, artifacts, None)
            backend = create_backend(spec.backend, device, manifest=manifest, threads=spec.threads)
            tokenizer, self.precision = PromptTokenizer(manifest.tokenizer_dir), manifest.precision
        else:
            model = load_model(Path(spec.weights) if spec.weights else None, None, None, None, None)
            backend = create_backend(spec.backend, device, model=model, dtype=spec.dtype)
            tokenizer, self.precision = PromptTokenizer(model.tokenizer_dir), spec.dtype
        self.recorder = _Recorder(backend)
        self.pipeline = StarPipeline(backend, tokenizer)
        self.preview_pipeline = StarPipeline(self.recorder, tokenizer)
        self.config = self.pipeline.config
        self.backend_name = backend.name
        self.device = device
        self.lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """Model config, backend, precision and device, for /v1/model."""
        return {
            "backend": self.backend_name, "precision": self.precision, "device": self.device,
            "resolution": self.config.resolution, "num_scales": self.config.num_scales,
            "patch_nums": list(self.config.patch_nums), "config": self.config.to_dict(),
        }

    def sampling(self, job: Job) -> SamplingConfig:
        """The job's settings as a SamplingConfig, top-k clamped to the codebook."""
        top_k = SamplingConfig.top_k if job.top_k is None else job.top_k
        config = SamplingConfig(cfg=job.cfg, top_k=top_k, top_p=job.top_p, seed=job.seed)
        return config.clamped(self.config.transformer.vocab_size)

    def generate(self, jobs: Sequence[Job], on_preview: PreviewCallback | None = None) -> list[np.ndarray]:
        """One image (H, W, 3) uint8 per job; jobs sharing settings run as one batch."""
        results: dict[int, np.ndarray] = {}
        order = sorted(range(len(jobs)), key=lambda i: repr(jobs[i].settings()))
        for _, group in groupby(order, key=lambda i: repr(jobs[i].settings())):
            indices = list(group)
            results.update(zip(indices, self._run([jobs[i] for i in indices], indices, on_preview)))
        return [results[i] for i in range(len(jobs))]

    def _run(self, jobs: list[Job], indices: list[int], on_preview: PreviewCallback | None) -> list[np.ndarray]:
        """One pipeline call for jobs that share their sampler settings."""
        prompts, seeds = [j.prompt for j in jobs], [j.seed for j in jobs]
        with self.lock, torch.inference_mode():
            if on_preview is None:
                return to_pixels(self.pipeline.generate(prompts, self.sampling(jobs[0]), seeds).images)

            def scale_done(scale: int, num_scales: int) -> None:
                coarse = to_pixels(self.recorder.inner.decode(self.recorder.f_hat))
                on_preview(scale, num_scales, dict(zip(indices, coarse)))

            generation = self.preview_pipeline.generate(prompts, self.sampling(jobs[0]), seeds, on_scale=scale_done)
            return to_pixels(generation.images)
