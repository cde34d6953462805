"""The Python API: ``StarPipeline.from_pretrained(path)``, then ``pipe("a prompt").images``.

Modelled on diffusers: one object holds a loaded model on one backend; calling it with a
prompt or a list of prompts returns PIL images (or arrays), and a callback sees every scale.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .config import SamplingConfig, StarConfig
from .errors import ConfigError, WeightsError
from .images import to_pil

if TYPE_CHECKING:
    from .pipeline import Generation, ScaleEvent, ScaleLoop

log = logging.getLogger("star_deploy")

OutputType = Literal["pil", "np", "pt"]
OUTPUT_TYPES = ("pil", "np", "pt")
MANIFEST = "manifest.json"


@dataclass
class StarPipelineOutput:
    """Images in the asked form, the seed of each and its tokens (N, L)."""

    images: Any
    seeds: list[int]
    tokens: np.ndarray


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


def hub_snapshot(path: Path) -> Path:
    """A Hugging Face cache folder (models--org--name) -> its snapshot of ``refs/main``, else ``path``."""
    snapshots = path / "snapshots"
    if not snapshots.is_dir():
        return path
    ref = path / "refs" / "main"
    if ref.is_file():
        chosen = snapshots / ref.read_text().strip()
        if chosen.is_dir():
            return chosen
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) != 1:
        raise WeightsError(f"{snapshots}: {len(found)} snapshots and no refs/main; pass the snapshot folder itself")
    return found[0]


def star_for_resolution(folder: Path, resolution: int | None) -> Path | None:
    """In a folder with several official STAR checkpoints, the one trained for ``resolution``."""
    from .release import STAR_PATTERNS, resolution_from_name

    found = sorted({p for pattern in STAR_PATTERNS for p in folder.glob(pattern)})
    if len(found) < 2 or resolution is None:
        return None
    matching = [p for p in found if resolution_from_name(p) == resolution]
    return matching[0] if len(matching) == 1 else None


def normalize_prompts(prompt: str | Sequence[str], per_prompt: int) -> list[str]:
    """A str is one prompt; a list holds several; each is repeated ``per_prompt`` times."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, Sequence) else []
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConfigError("prompt must be a str or a non-empty list of str")
    if per_prompt < 1:
        raise ConfigError(f"num_images_per_prompt must be >= 1, got {per_prompt}")
    return [p for p in prompts for _ in range(per_prompt)]


def normalize_seeds(seed: int | Sequence[int], count: int) -> list[int]:
    """An int seeds image i with ``seed + i``; a list gives every image its own seed."""
    if isinstance(seed, int):
        return [seed + i for i in range(count)]
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise ConfigError(f"seed: {len(seeds)} seeds for {count} images; give one per image or a single int")
    return seeds


class StarPipeline:
    """A STAR model loaded on one backend; call it with prompts to get images."""

    def __init__(self, loop: ScaleLoop, backend_name: str, precision: str) -> None:
        self.loop = loop
        self.backend_name = backend_name
        self.precision = precision

    @property
    def config(self) -> StarConfig:
        return self.loop.config

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        *,
        backend: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        resolution: int | None = None,
        threads: int = 0,
        cuda_graphs: bool = False,
        compile: bool = False,
        provider: str | None = None,
        provider_options: dict[str, Any] | None = None,
        session_options: Any = None,
    ) -> StarPipeline:
        """Load a release folder, a Hugging Face snapshot of it, an artefact folder, or (None) the demo.

        The demo runs with ONNX Runtime on its shipped graphs (no PyTorch needed), or with
        ``backend="torch"`` on its weights.

        ``backend`` defaults to onnxruntime for an artefact folder (``star-deploy export``) and
        to torch for weights; ``dtype``, ``cuda_graphs`` and ``compile`` (torch.compile of the step)
        apply to torch; ``threads``, ``provider`` (cpu, cuda, tensorrt, openvino, coreml, directml),
        ``provider_options`` and ``session_options`` (an ``onnxruntime.SessionOptions``) to onnxruntime.
        """
        from .backends.factory import create_backend, default_device
        from .pipeline import ScaleLoop
        from .tokenizer import PromptTokenizer

        if path is None and backend in (None, "onnxruntime"):
            from .demo import DEMO_GRAPHS

            path = DEMO_GRAPHS
        folder = None if path is None else hub_snapshot(Path(path))
        if folder is not None and not folder.exists():
            raise WeightsError(
                f"{folder}: no such file or folder; give a release folder, an artefact folder or None for the demo"
            )
        is_artifacts = folder is not None and (folder / MANIFEST).is_file()
        backend = backend or ("onnxruntime" if is_artifacts else "torch")
        device = default_device(backend, device)
        if backend == "torch":
            if is_artifacts:
                raise ConfigError(
                    f"{folder}: an artefact folder holds ONNX graphs; use backend='onnxruntime' or 'tensorrt'"
                )
            model = load_weights(folder, resolution)
            engine = create_backend(
                "torch", device, model=model, dtype=dtype, cuda_graphs=cuda_graphs, compile_step=compile
            )
            return cls(ScaleLoop(engine, PromptTokenizer(model.tokenizer_dir)), "torch", dtype)
        if not is_artifacts:
            raise ConfigError(
                f"backend={backend!r} runs exported graphs: give an artefact folder made by `star-deploy export`, not "
                f"{folder}"
            )
        from .artifacts.manifest import load_manifest, verify_graph_hashes

        manifest = load_manifest(folder)
        verify_graph_hashes(manifest)
        engine = create_backend(
            backend,
            device,
            manifest=manifest,
            threads=threads,
            provider=provider,
            provider_options=provider_options,
            session_options=session_options,
        )
        return cls(ScaleLoop(engine, PromptTokenizer(manifest.tokenizer_dir)), backend, manifest.precision)

    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        seed: int | Sequence[int] = 0,
        num_images_per_prompt: int = 1,
        guidance_scale: float = 4.0,
        top_k: int | None = None,
        top_p: float = 0.8,
        batch_size: int | None = None,
        output_type: OutputType = "pil",
        callback_on_scale_end: ScaleCallbackFn | None = None,
        sampler: str = "portable",
    ) -> StarPipelineOutput:
        """Generate one image per prompt (times ``num_images_per_prompt``).

        Image i uses seed ``seed + i`` (or ``seed[i]``); an image does not depend on what it is
        batched with. ``top_k=None`` is the official 600, capped at the codebook size.
        ``callback_on_scale_end`` gets a ``ScaleProgress`` per scale (and batch); returning
        False stops the loop there and decodes the coarse image. ``sampler="official"``
        reproduces the official code's torch.Generator draws (see ``star_deploy.sampling``).
        """
        if output_type not in OUTPUT_TYPES:
            raise ConfigError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        prompts = normalize_prompts(prompt, num_images_per_prompt)
        seeds = normalize_seeds(seed, len(prompts))
        sampling = SamplingConfig(
            cfg=guidance_scale,
            top_k=SamplingConfig.top_k if top_k is None else top_k,
            top_p=top_p,
            seed=seeds[0],
            sampler=sampler,
        )
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        step = batch_size or len(prompts)
        results = [
            self._generate(prompts[i : i + step], sampling, seeds[i : i + step], callback_on_scale_end)
            for i in range(0, len(prompts), step)
        ]
        images = np.concatenate([r.images for r in results])
        tokens = np.concatenate([r.tokens for r in results])
        return StarPipelineOutput(convert_images(images, output_type), seeds, tokens)

    def _generate(
        self, prompts: list[str], sampling: SamplingConfig, seeds: list[int], callback: ScaleCallbackFn | None
    ) -> Generation:
        on_scale = None
        if callback is not None:

            def on_scale(event: ScaleEvent) -> bool | None:
                return callback(ScaleProgress(event.scale, event.num_scales, event))

        return self.loop.generate(prompts, sampling, seeds, on_scale=on_scale, timing=False)

    def __repr__(self) -> str:
        settings = f"backend={self.backend_name!r}, precision={self.precision!r}, resolution={self.config.resolution}"
        return f"StarPipeline({settings})"


def load_weights(folder: Path | None, resolution: int | None):
    """The release in ``folder`` (the demo for None); several STAR checkpoints are told apart by ``resolution``."""
    from .release import load_model

    star = None if folder is None else star_for_resolution(folder, resolution)
    return load_model(folder, None, None, star, resolution)
