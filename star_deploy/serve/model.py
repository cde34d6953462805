"""The one place the server touches the model (the ``StarPipeline`` API): load, generate, preview."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import numpy as np

from ..core.call_options import CallOptions
from ..core.fast import FastMode
from ..errors import StarDeployError
from ..runtime.plan import LoadOptions, plan_load

PreviewCallback = Callable[[int, int, dict[int, np.ndarray]], None]
"""Called after each scale with (scale, num_scales, {job index: coarse image (H, W, 3) uint8})."""


@dataclass(frozen=True)
class Job:
    """One image to generate: prompt, seed and sampler settings (None: the model's sampling defaults)."""

    prompt: str
    seed: int = 0
    cfg: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    fast: int = 0
    cfg_until: int | None = None


class PipelineUnusable(RuntimeError):
    """The replica's pipeline was released or failed its probe: the request belongs on another replica."""


PROBE = Job(prompt="", seed=0)
"""The generation a replica runs to check its pipeline after a failure."""


def to_pixels(images: np.ndarray) -> list[np.ndarray]:
    """(B, H, W, 3) floats in [0, 1] -> B arrays (H, W, 3) uint8, rounded to nearest."""
    return list((np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8))


class ImageModel:
    """A loaded ``StarPipeline``; thread-safe (one generation at a time)."""

    def __init__(self, spec: LoadOptions) -> None:
        from ..api import StarPipeline

        self.spec = spec
        plan = plan_load(spec)
        self.device = plan.device
        self.pipe = StarPipeline.from_plan(plan)
        self.config = self.pipe.config
        self.defaults = self.pipe.defaults
        self.backend = self.pipe.backend_name
        self.precision = self.pipe.precision
        self.decoder = self.pipe.decoder
        self.lock = threading.Lock()
        self.failure: str | None = None

    def close(self) -> None:
        """Release the pipeline (its sessions and memory); later calls raise ``PipelineUnusable``."""
        with self.lock:
            self.pipe = None

    def check_usable(self) -> None:
        """Raise ``PipelineUnusable`` if the pipeline was released, or failed and fails a probe generation again."""
        if self.pipe is None:
            raise PipelineUnusable("the pipeline was released")
        if self.failure is None:
            return
        try:
            self._run([PROBE], [0], None)
        except Exception as exc:  # noqa: BLE001 - any failure of the probe makes the replica unusable
            raise PipelineUnusable(f"the pipeline fails ({type(exc).__name__}: {exc}); first: {self.failure}") from None
        self.failure = None

    def info(self) -> dict[str, Any]:
        """Model config, backend, precision and device, for /v1/model; raises once the pipeline is released."""
        if self.pipe is None:
            raise PipelineUnusable("the pipeline was released")
        return {
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "resolution": self.config.resolution,
            "num_scales": self.config.num_scales,
            "patch_nums": list(self.config.patch_nums),
            "config": self.config.to_dict(),
        }

    def settings(self, job: Job) -> tuple[float, int, float, FastMode]:
        """The cfg, top-k (capped at the codebook), top-p and fast mode of a job; unset ones are the model's defaults.

        Jobs with equal settings may share a batch.
        """
        d = self.defaults
        top_k = d.top_k if job.top_k is None else job.top_k
        return (
            d.cfg if job.cfg is None else job.cfg,
            min(top_k, self.config.transformer.vocab_size),
            d.top_p if job.top_p is None else job.top_p,
            CallOptions(fast=job.fast, cfg_until=job.cfg_until).fast_mode(self.config, self.decoder),
        )

    def generate(self, jobs: Sequence[Job], on_preview: PreviewCallback | None = None) -> list[np.ndarray]:
        """One image (H, W, 3) uint8 per job; jobs sharing settings run as one batch."""
        results: dict[int, np.ndarray] = {}
        key = lambda i: repr(self.settings(jobs[i]))  # noqa: E731
        for _, group in groupby(sorted(range(len(jobs)), key=key), key=key):
            indices = list(group)
            results.update(zip(indices, self._run([jobs[i] for i in indices], indices, on_preview)))
        return [results[i] for i in range(len(jobs))]

    def _run(self, jobs: list[Job], indices: list[int], on_preview: PreviewCallback | None) -> list[np.ndarray]:
        """One pipeline call for jobs that share their sampler settings."""
        callback = None
        if on_preview is not None:

            def callback(progress: Any) -> None:
                coarse = to_pixels(progress.preview("np"))
                on_preview(progress.scale, progress.num_scales, dict(zip(indices, coarse)))

        first = jobs[0]
        with self.lock:
            if self.pipe is None:
                raise PipelineUnusable("the pipeline was released")
            try:
                out = self._call(jobs, first, callback)
            except StarDeployError:
                raise  # refused before generating (a call that cannot fit): the pipeline is intact
            except Exception as exc:
                self.failure = f"{type(exc).__name__}: {exc}"
                raise
        return to_pixels(out.images)

    def _call(self, jobs: list[Job], first: Job, callback: Any) -> Any:
        """The pipeline call (under the lock)."""
        cfg, top_k, top_p, mode = self.settings(first)
        return self.pipe(
            [j.prompt for j in jobs],
            seed=[j.seed for j in jobs],
            guidance_scale=cfg,
            top_k=top_k,
            top_p=top_p,
            output_type="np",
            callback_on_scale_end=callback,
            fast=mode.level,
            cfg_until=mode.cfg_until,
            keep=mode.keep or None,
        )
