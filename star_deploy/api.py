"""The Python API: ``StarPipeline.from_pretrained(path)``, then ``pipe("a prompt").images``.

Modelled on diffusers: one object holds a loaded model on one backend; calling it with a
prompt or a list of prompts returns PIL images (or arrays), and a callback sees every scale.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .core import arguments
from .core.call_options import CallOptions
from .core.config import SamplingConfig, StarConfig
from .core.extras import require_installed
from .core.fast import EXACT, FastMode
from .errors import ConfigError
from .files.images import to_pil
from .runtime.loading import Loaded, load
from .runtime.plan import LOAD_FIELDS, LoadOptions, LoadPlan, plan_load

if TYPE_CHECKING:
    from rich.progress import Progress

    from .runtime.pipeline import Generation, ScaleEvent

log = logging.getLogger("star_deploy")

OutputType = Literal["pil", "np", "pt"]
OUTPUT_TYPES = ("pil", "np", "pt")
PROGRESS_KEYS = ("disable", "desc", "leave")
LOCK_POLL_S = 0.1
"""How often a waiting call looks whether the running call is stuck in its callback."""


@dataclass
class StarPipelineOutput:
    """Images in the asked form, the seed of each, its tokens (N, L) and the fast mode they ran (exact by default)."""

    images: Any
    seeds: list[int]
    tokens: np.ndarray
    fast: FastMode = EXACT


@dataclass
class ScaleProgress:
    """What ``callback_on_scale_end`` receives after each scale."""

    scale: int
    num_scales: int
    _event: ScaleEvent

    @property
    def tokens(self) -> np.ndarray:
        """This scale's token map (N, p, p) int64 (copied from the device when read)."""
        return self._event.tokens

    def preview(self, output_type: OutputType = "pil") -> Any:
        """The coarse images decoded from the scales so far."""
        arguments.one_of("output_type", output_type, OUTPUT_TYPES)
        return convert_images(self._event.preview(), output_type)


ScaleCallbackFn = Callable[[ScaleProgress], "bool | None"]


def convert_images(images: np.ndarray, output_type: OutputType) -> Any:
    """(N, 3, H, W) float in [0, 1] -> PIL images, (N, H, W, 3) float array, or a torch tensor (N, 3, H, W)."""
    if output_type == "pil":
        return [to_pil(img) for img in images]
    if output_type == "np":
        return np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    import torch

    return torch.from_numpy(np.ascontiguousarray(images))


def load_options(options: dict[str, Any]) -> LoadOptions:
    """``from_pretrained``'s keyword arguments as LoadOptions; an unknown one is refused, naming the known ones."""
    unknown = sorted(set(options) - set(LOAD_FIELDS))
    if unknown:
        raise ConfigError(f"from_pretrained: unknown option(s) {', '.join(unknown)}; use {', '.join(LOAD_FIELDS)}")
    return LoadOptions(**options)


def normalize_prompts(prompt: str | Sequence[str], per_prompt: Any) -> list[str]:
    """A str is one prompt; a list holds several; each is repeated ``per_prompt`` times."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, Sequence) else []
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConfigError("prompt must be a str or a non-empty list of str")
    arguments.prompts(prompts)
    per_prompt = arguments.integer("num_images_per_prompt", per_prompt, 1)
    return [p for p in prompts for _ in range(per_prompt)]


class StarPipeline:
    """A STAR model loaded on one backend; call it with prompts to get images.

    One pipeline may be shared by threads: calls on it run one at a time (a lock), each
    giving the images it would give alone. A ``callback_on_scale_end`` may not call the
    same pipeline again, nor wait for another thread that calls it: the first is refused at
    once, the second when the waiting call has waited ``callback_wait_s`` seconds while the
    callback did not return (ConfigError in the waiting thread). Load a second pipeline for that.
    """

    callback_wait_s: float = 30.0
    """How long a call waits while the running call's callback does not return, before refusing."""

    def __init__(self, loaded: Loaded) -> None:
        self.loop = loaded.loop
        self.backend_name = loaded.backend
        self.precision = loaded.precision
        self.defaults = loaded.defaults
        self.model = loaded.model
        self.manifest = loaded.manifest
        self.decoder = loaded.decoder
        """The decoder's dtype where ``decoder_dtype`` lowered it, else None; every output's ``fast`` records it."""
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._callback_since: float | None = None
        self._progress = {"disable": None, "desc": "scales", "leave": False}

    @property
    def config(self) -> StarConfig:
        return self.loop.config

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, **options: Any) -> StarPipeline:
        """Load a release folder, a Hub repo id or cache folder of one, an artefact folder, or (None) the demo.

        The demo runs with ONNX Runtime on its shipped graphs (no PyTorch needed), or with
        ``backend="torch"`` on its weights. A repo id (``"taocrayon/STAR"``) is fetched with
        huggingface_hub into ``cache_dir`` (default: its cache), from the cache only when
        ``local_files_only`` or HF_HUB_OFFLINE is set.

        ``options`` are the fields of ``LoadOptions``: ``backend`` defaults to onnxruntime for an
        artefact folder (``star-deploy export``) and to torch for weights; ``device`` to the backend's
        (cuda for tensorrt, else cpu); ``dtype``, ``cuda_graphs``, ``compile`` (torch.compile of the step)
        and ``compile_cache`` apply to torch; ``threads``, ``provider`` (cpu, cuda, tensorrt, openvino, coreml,
        directml), ``provider_options`` and ``session_options`` (an ``onnxruntime.SessionOptions``) to
        onnxruntime. ``clip``, ``vae`` and ``star`` replace parts of the release (for artefacts: the
        checkpoints they must have been exported from). Memory is checked before loading for ``max_batch_size``.
        """
        return cls.from_plan(plan_load(load_options(options), path))

    @classmethod
    def from_plan(cls, plan: LoadPlan) -> StarPipeline:
        """Load a plan made by ``plan_load`` (the CLI checks its outputs between the two)."""
        return cls(load(plan))

    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        seed: int | Sequence[int] = 0,
        num_images_per_prompt: int = 1,
        guidance_scale: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        batch_size: int | None = None,
        output_type: OutputType = "pil",
        callback_on_scale_end: ScaleCallbackFn | None = None,
        sampler: str = "portable",
        fast: int = 0,
        cfg_until: int | None = None,
        keep: Sequence[float] | str | None = None,
    ) -> StarPipelineOutput:
        """Generate one image per prompt (times ``num_images_per_prompt``).

        Image i uses seed ``seed + i`` (or ``seed[i]``); an image does not depend on what it is
        batched with. ``guidance_scale``, ``top_k`` and ``top_p`` default to the model's
        (``self.defaults``: recorded at export, else the official 4.0, 600 and 0.8); ``top_k`` is
        capped at the codebook size. ``callback_on_scale_end`` gets a ``ScaleProgress`` per scale
        (and batch); returning False stops the loop there and decodes the coarse image.
        ``sampler="official"`` reproduces the official code's torch.Generator draws (see
        ``star_deploy.core.sampling``). Calls from several threads run one after another.
        ``fast`` picks a rung of the fast modes (0: exact, the default; 1: guidance stops after
        the model's preset scale; 2: also cached token pruning at the last scales), ``cfg_until``
        and ``keep`` override the preset's knobs (``star_deploy.core.fast``); the output's
        ``fast`` records what ran.
        """
        arguments.one_of("output_type", output_type, OUTPUT_TYPES)
        if output_type == "pt":
            require_installed("torch", "output_type='pt'")  # before generating, not after
        call = CallOptions(seed, guidance_scale, top_k, top_p, batch_size, sampler, fast, cfg_until, keep)
        prompts = normalize_prompts(prompt, num_images_per_prompt)
        seeds = call.seeds(len(prompts))
        sampling = call.sampling(self.defaults, self.config.transformer.vocab_size)
        mode = call.fast_mode(self.config, self.decoder)
        step = call.batch_size or len(prompts)
        if callback_on_scale_end is not None and not callable(callback_on_scale_end):
            raise ConfigError(f"callback_on_scale_end must be callable or None, got {type(callback_on_scale_end)}")
        batches = range(0, len(prompts), step)
        self.loop.check_memory(min(step, len(prompts)), len(prompts))
        with self._exclusive(), self._progress_bar(len(batches) * self.config.num_scales) as advance:
            results = [
                self._generate(
                    prompts[i : i + step], sampling, seeds[i : i + step], callback_on_scale_end, advance, mode
                )
                for i in batches
            ]
        images = np.concatenate([r.images for r in results])
        tokens = np.concatenate([r.tokens for r in results])
        return StarPipelineOutput(convert_images(images, output_type), seeds, tokens, mode)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One generation at a time; a call from inside a callback (same thread) is refused at once, and a call that
        a callback waits for (another thread) once the callback has not returned for ``callback_wait_s``."""
        me = threading.get_ident()
        if self._owner == me:
            raise ConfigError(
                "this pipeline is generating: a callback_on_scale_end cannot call it again; load a second "
                "StarPipeline for nested generation, or generate after the call returns"
            )
        while not self._lock.acquire(timeout=LOCK_POLL_S):
            since = self._callback_since
            if since is not None and time.monotonic() - since > self.callback_wait_s:
                raise ConfigError(
                    f"this pipeline's running call has been in its callback_on_scale_end for over "
                    f"{self.callback_wait_s:g} s while this call waits for it: a callback must not wait for another "
                    "call of the same pipeline (it would never return); load a second StarPipeline for that"
                )
        self._owner = me
        try:
            yield
        finally:
            self._owner = None
            self._lock.release()

    def _generate(
        self,
        prompts: list[str],
        sampling: SamplingConfig,
        seeds: list[int],
        callback: ScaleCallbackFn | None,
        advance: Callable[[], None],
        mode: FastMode,
    ) -> Generation:
        def on_scale(event: ScaleEvent) -> bool | None:
            advance()
            if callback is None:
                return None
            self._callback_since = time.monotonic()
            try:
                return arguments.callback_result(callback(ScaleProgress(event.scale, event.num_scales, event)))
            finally:
                self._callback_since = None

        return self.loop.generate(prompts, sampling, seeds, on_scale=on_scale, timing=False, fast=mode)

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Configure the progress bar over scales: ``disable`` (True: off; default: on a terminal), ``desc``,
        ``leave`` (keep the finished bar)."""
        unknown = sorted(set(kwargs) - set(PROGRESS_KEYS))
        if unknown:
            raise ConfigError(f"set_progress_bar_config: unknown option(s) {', '.join(unknown)}; use {PROGRESS_KEYS}")
        if kwargs.get("disable") is not None:
            arguments.flag("disable", kwargs["disable"])
        if "leave" in kwargs:
            arguments.flag("leave", kwargs["leave"])
        if "desc" in kwargs:
            arguments.text("desc", kwargs["desc"])
        self._progress.update(kwargs)

    @contextmanager
    def _progress_bar(self, total: int) -> Iterator[Callable[[], None]]:
        """A rich bar on stderr advancing once per scale and batch (a no-op when disabled)."""
        from rich.console import Console

        console = Console(stderr=True)
        disable = self._progress["disable"]
        if disable is None:
            disable = not (console.is_terminal or console.is_jupyter)
        if disable:
            yield lambda: None
            return
        bar = new_progress(console, not self._progress["leave"])
        with bar:
            task = bar.add_task(self._progress["desc"], total=total)
            yield lambda: bar.advance(task)

    def save_pretrained(self, folder: str | Path, precision: str = "fp32", overwrite: bool = False) -> Path:
        """Export a torch-loaded pipeline to an artefact folder (as ``star-deploy export``); returns the folder.

        The folder appears only when complete; ``self.defaults`` are recorded as its sampling defaults.
        """
        from .export.pretrained import save_artifacts

        if self.model is None:
            raise ConfigError(
                f"save_pretrained exports PyTorch weights; this pipeline runs exported graphs "
                f"({self.backend_name}): copy its artefact folder {self.manifest.root if self.manifest else ''}"
            )
        return save_artifacts(self.model, self.precision, Path(folder), precision, overwrite, self.defaults)

    def __repr__(self) -> str:
        settings = f"backend={self.backend_name!r}, precision={self.precision!r}, resolution={self.config.resolution}"
        return f"StarPipeline({settings})"


def new_progress(console: Any, transient: bool) -> Progress:
    """A rich progress bar (description, bar, count, elapsed) on ``console``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, transient=transient, console=console)
