"""What ``StarPipeline.from_pretrained`` loads: weights on torch or an artefact folder on a graph runtime.

The CLI's ``run`` loads through here too, so memory checks, Hub names and every option behave alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import arguments
from ..core.config import SamplingConfig
from ..core.dtypes import check_compute_dtype
from ..core.extras import require_torch
from ..errors import ConfigError, WeightsError
from ..release.hub import local_folder

if TYPE_CHECKING:
    from ..artifacts.manifest import Manifest
    from ..release.weights import StarTorchModel
    from .pipeline import ScaleLoop

MANIFEST = "manifest.json"
BACKENDS = ("torch", "onnxruntime", "tensorrt")
ORT_ONLY = ("provider", "provider_options", "session_options")
TORCH_ONLY = ("cuda_graphs", "compile")


@dataclass(frozen=True)
class LoadOptions:
    """Every ``from_pretrained`` option, checked once."""

    backend: str | None = None
    device: str | None = None
    dtype: str = "float32"
    resolution: int | None = None
    clip: Path | None = None
    vae: Path | None = None
    star: Path | None = None
    max_batch_size: int = 1
    threads: int = 0
    cuda_graphs: bool = False
    compile: bool = False
    provider: str | None = None
    provider_options: dict[str, Any] | None = None
    session_options: Any = None
    cache_dir: str | Path | None = None
    local_files_only: bool = False

    def __post_init__(self) -> None:
        if self.backend is not None:
            arguments.one_of("backend", self.backend, BACKENDS)
        arguments.text("device", self.device, optional=True)
        check_compute_dtype(arguments.text("dtype", self.dtype))
        if self.resolution is not None:
            arguments.integer("resolution", self.resolution, 1)
        arguments.integer("max_batch_size", self.max_batch_size, 1)
        arguments.threads(self.threads)
        arguments.flag("cuda_graphs", self.cuda_graphs)
        arguments.flag("compile", self.compile)
        arguments.flag("local_files_only", self.local_files_only)
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, Path)):
            raise ConfigError(f"cache_dir must be a str, a pathlib.Path or None, got {type(self.cache_dir).__name__}")
        arguments.text("provider", self.provider, optional=True)
        if self.provider == "":
            raise ConfigError("provider must name an execution provider or be None, got ''")
        arguments.mapping("provider_options", self.provider_options)
        arguments.session_options(self.session_options)

    def check_backend(self, backend: str) -> None:
        """Refuse options that the chosen backend would silently ignore."""
        for names, owner in ((ORT_ONLY, "onnxruntime"), (TORCH_ONLY, "torch")):
            used = [name for name in names if backend != owner and getattr(self, name) not in (None, False)]
            if used:
                listed = ", ".join(used)
                raise ConfigError(f"{listed} applies to backend={owner!r}, not to backend={backend!r}; drop it")


@dataclass
class Loaded:
    """A ready scale loop and what the pipeline reports about it."""

    loop: ScaleLoop
    backend: str
    precision: str
    defaults: SamplingConfig
    model: StarTorchModel | None = None
    manifest: Manifest | None = None


def star_for_resolution(folder: Path, resolution: int | None) -> Path | None:
    """In a folder with several official STAR checkpoints, the one trained for ``resolution``."""
    from ..release.finder import STAR_PATTERNS, resolution_from_name

    found = sorted({p for pattern in STAR_PATTERNS for p in folder.glob(pattern)})
    if len(found) < 2 or resolution is None:
        return None
    matching = [p for p in found if resolution_from_name(p) == resolution]
    return matching[0] if len(matching) == 1 else None


def memory_check(batch: int, dtype: str, device: str, weight_bytes: int | None = None):
    """A check of the config (before weights materialize) that ``batch`` images fit on ``device``."""
    from .memory import available_bytes, check_fits, estimate

    def check(config) -> None:
        need = estimate(config, batch, dtype, device, weight_bytes)
        check_fits(need, available_bytes(device), device, f"batch {batch} at {config.resolution} px")

    return check


def resolve(path: str | Path | None, options: LoadOptions) -> tuple[Path | None, str]:
    """The folder to load (None: the demo weights) and the backend that runs it."""
    from ..demo import DEMO_GRAPHS

    given = any(p is not None for p in (options.clip, options.vae, options.star))
    if path is None and not given and options.backend in (None, "onnxruntime"):
        path = DEMO_GRAPHS
    if path is not None and not isinstance(path, (str, Path)):
        raise ConfigError(f"path must be a str, a pathlib.Path or None, got {type(path).__name__}")
    folder = None if path is None else local_folder(path, options.cache_dir, options.local_files_only)
    if folder is not None and not folder.exists():
        raise WeightsError(
            f"{folder}: no such file or folder; give a release folder, an artefact folder, a Hub repo id or None "
            f"for the demo"
        )
    return folder, options.backend or ("onnxruntime" if is_artifact_folder(folder) else "torch")


def is_artifact_folder(folder: Path | None) -> bool:
    """A folder made by ``star-deploy export`` (it holds a manifest.json)."""
    return folder is not None and (folder / MANIFEST).is_file()


def load(path: str | Path | None, options: LoadOptions) -> Loaded:
    """Load ``path`` as ``options`` say."""
    from ..backends.factory import check_backend_device, default_device

    folder, backend = resolve(path, options)
    options.check_backend(backend)
    device = default_device(backend, options.device)
    check_backend_device(backend, device)
    is_artifacts = is_artifact_folder(folder)
    if backend == "torch":
        if is_artifacts:
            raise ConfigError(
                f"{folder}: an artefact folder holds ONNX graphs; use backend='onnxruntime' or 'tensorrt'"
            )
        return load_torch(folder, device, options)
    if not is_artifacts:
        raise ConfigError(
            f"backend={backend!r} runs exported graphs: give an artefact folder made by `star-deploy export`, not "
            f"{folder}"
        )
    return load_graphs(folder, backend, device, options)


def load_torch(folder: Path | None, device: str, options: LoadOptions) -> Loaded:
    """A release folder (None: the demo weights) on the torch backend."""
    from ..backends.factory import create_backend
    from .pipeline import ScaleLoop

    require_torch("loading .pth weights")
    from ..core.tokenizer import PromptTokenizer
    from ..release.weights import load_model

    star = options.star or (None if folder is None else star_for_resolution(folder, options.resolution))
    check = memory_check(options.max_batch_size, options.dtype, device)
    model = load_model(folder, options.clip, options.vae, star, options.resolution, check)
    engine = create_backend(
        "torch",
        device,
        model=model,
        dtype=options.dtype,
        cuda_graphs=options.cuda_graphs,
        compile_step=options.compile,
    )
    loop = ScaleLoop(engine, PromptTokenizer(model.tokenizer_dir))
    return Loaded(loop, "torch", options.dtype, SamplingConfig(), model=model)


def load_graphs(folder: Path, backend: str, device: str, options: LoadOptions) -> Loaded:
    """An artefact folder on ONNX Runtime or TensorRT, its files hash-checked and its sources matched."""
    from ..artifacts.manifest import load_manifest
    from ..backends.factory import create_backend
    from ..core.tokenizer import PromptTokenizer
    from .pipeline import ScaleLoop

    if backend == "tensorrt":
        from ..engines.trt_api import import_tensorrt

        import_tensorrt()
    manifest = load_manifest(folder)
    check_resolution(manifest, options.resolution)
    check_release(manifest, options)
    dtype = "float16" if manifest.precision == "fp16" else "float32"
    memory_check(options.max_batch_size, dtype, device, manifest.graph_bytes)(manifest.config)
    engine = create_backend(
        backend,
        device,
        manifest=manifest,
        threads=options.threads,
        provider=options.provider,
        provider_options=options.provider_options,
        session_options=options.session_options,
    )
    loop = ScaleLoop(engine, PromptTokenizer(manifest.tokenizer_dir))
    return Loaded(loop, backend, manifest.precision, manifest.sampling, manifest=manifest)


def check_resolution(manifest: Manifest, resolution: int | None) -> None:
    """Refuse a resolution other than the one the artefacts were exported for."""
    if resolution is not None and resolution != manifest.config.resolution:
        raise ConfigError(
            f"resolution {resolution}: the artefacts in {manifest.root} are for {manifest.config.resolution} px; "
            f"drop the resolution or export again"
        )


def check_release(manifest: Manifest, options: LoadOptions) -> None:
    """With ``clip``/``vae``/``star`` given, refuse artefacts exported from other checkpoints."""
    if all(p is None for p in (options.clip, options.vae, options.star)):
        return
    from ..artifacts.sources import check_sources
    from ..release.finder import resolve_release

    paths = resolve_release(None, options.clip, options.vae, options.star)
    check_sources(manifest, paths, "export again from these weights or drop the weight options")
