"""Validate once: ``LoadOptions`` (every load option, typed and checked) -> a ``LoadPlan`` (resolved and checked).

``plan_load`` runs every cheap check before anything heavy loads: the options' types, the backend
and the options that apply to it alone, the device, the folders (Hub names resolved), the release's
parts, the resolution. ``StarPipeline.from_pretrained``, ``star-deploy run``, ``bench``, ``web`` and the
server's pre-flight all call it, and the layers below trust what it checked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Annotated, Any

from ..artifacts.manifest import MANIFEST, read_manifest
from ..artifacts.schema import parse_config
from ..backends.devices import check_device_name
from ..backends.registry import BackendSpec, backend_spec, check_backend_name, default_backend, help_list
from ..core import arguments
from ..core.arguments import Checked, CliOption
from ..core.config import SCHEDULES
from ..core.dtypes import check_compute_dtype
from ..errors import ConfigError, WeightsError
from ..release.finder import ReleasePaths, choose_resolution, release_paths, star_for_resolution
from ..release.hub import option_folder


def _optional_text(name: str, value: Any) -> str | None:
    return arguments.text(name, value, optional=True)


def _backend(name: str, value: Any) -> str | None:
    return check_backend_name(_optional_text(name, value))


def _device(name: str, value: Any) -> str | None:
    if _optional_text(name, value) is not None:
        check_device_name(value)
    return value


def _dtype(name: str, value: Any) -> str | None:
    value = _optional_text(name, value)
    return None if value is None else check_compute_dtype(value)


def _provider(name: str, value: Any) -> str | None:
    if _optional_text(name, value) == "":
        raise ConfigError(f"{name} must name an execution provider or be None, got ''")
    return value


def _resolution(name: str, value: Any) -> int | None:
    value = arguments.optional_integer(name, value, 1)
    if value is not None and value not in SCHEDULES:
        raise ConfigError(f"no scale schedule for resolution {value}; choose one of {', '.join(map(str, SCHEDULES))}")
    return value


Backend = Annotated[str | None, Checked(_backend)]
Folder = Annotated[Path | None, Checked(arguments.path)]
Device = Annotated[str | None, Checked(_device)]
Dtype = Annotated[str | None, Checked(_dtype)]
Resolution = Annotated[int | None, Checked(_resolution)]
Positive = Annotated[int, Checked(functools.partial(arguments.integer, minimum=1))]
Threads = Annotated[int, Checked(arguments.threads)]
Flag = Annotated[bool, Checked(arguments.flag)]
Provider = Annotated[str | None, Checked(_provider)]
Mapping = Annotated[dict[str, Any] | None, Checked(arguments.mapping)]
SessionOptions = Annotated[Any, Checked(arguments.session_options)]


DEFAULT_DTYPE = "float32"
"""The torch backend's compute dtype when ``dtype`` is not given."""

WEIGHTS_HELP = (
    "Folder of the STAR release (CLIP/, vae*.pth, star*.pth), or its Hub repo id. Default: the built-in demo STAR "
    "(128 px, trained on coloured shapes: 'a red circle on a blue background')."
)


@dataclass(frozen=True)
class LoadOptions:
    """Every option of loading a model, typed and checked once; a field's type says what it takes.

    ``weights`` is a release folder (``CLIP/``, ``vae*``, ``star*``) or a Hub repo id, ``artifacts`` a
    folder made by ``star-deploy export``; neither: the built-in demo. With ``artifacts``, ``weights``,
    ``clip``, ``vae`` and ``star`` name the checkpoints the export must have been made from.
    ``StarPipeline.from_pretrained`` takes these fields as keyword arguments, ``ServeOptions`` embeds
    them, and a field with a ``CliOption`` is an option of ``run``, ``bench`` and ``serve``
    (``star_deploy.commands.options``): a new field reaches them all.
    """

    backend: Annotated[
        Backend,
        CliOption(
            f"{help_list()}. Default: torch with weight options, else onnxruntime (on --artifacts, or on the "
            "built-in demo's graphs)."
        ),
    ] = None
    weights: Annotated[Folder, CliOption(WEIGHTS_HELP)] = None
    artifacts: Annotated[
        Folder,
        CliOption(
            "Artefact folder from `star-deploy export` (onnxruntime, tensorrt), or its Hub repo id. Default: the "
            "built-in demo's graphs."
        ),
    ] = None
    device: Annotated[Device, CliOption("cpu, cuda or cuda:N. Default: cuda for tensorrt, else cpu.")] = None
    dtype: Annotated[
        Dtype, CliOption("torch backend compute dtype: float32, float16 or bfloat16. Default: float32.")
    ] = None
    decoder_dtype: Annotated[
        Dtype,
        CliOption(
            "torch backend: the VQ decoder's dtype, e.g. bfloat16 (bf16 convolutions, native on AMX-BF16 and "
            "AVX512-BF16 CPUs): the tokens are unchanged, the image approximate and recorded as such (docs/fast.md). "
            "Default: --dtype."
        ),
    ] = None
    threads: Annotated[
        Threads, CliOption("Intra-op threads of onnxruntime, and of torch on CPU (0: one per physical core).")
    ] = 0
    resolution: Annotated[
        Resolution,
        CliOption("Output size the checkpoint was trained for: 256, 512 or 1024 (128 for the demo)."),
    ] = None
    clip: Annotated[Folder, CliOption("The release's CLIP folder (tokenizer/ and text_encoder/).")] = None
    vae: Annotated[Folder, CliOption("VQVAE checkpoint, e.g. vae_ch160v4096z32.pth.")] = None
    star: Annotated[Folder, CliOption("STAR checkpoint, e.g. star_rope_d30_512*.pth.")] = None
    max_batch_size: Positive = 1
    cuda_graphs: Annotated[
        Flag,
        CliOption(
            "torch backend on CUDA: capture every scale (step, draw, update) and the decoder as CUDA graphs on the "
            "first batch, replay them for the next (faster from the second batch on)."
        ),
    ] = False
    compile: Annotated[
        Flag,
        CliOption(
            "torch backend: compile the transformer block once with torch.compile (inductor), shared by every block "
            "and scale (two graphs for the whole schedule), on the first batch; combine with --cuda-graphs on CUDA."
        ),
    ] = False
    compile_cache: Annotated[
        Folder, CliOption("torch --compile: folder keeping what it compiled between runs (created).")
    ] = None
    provider: Annotated[
        Provider,
        CliOption(
            "onnxruntime execution provider: cpu, cuda, tensorrt, openvino, coreml or directml (as installed). "
            "Default: cuda for --device cuda, else cpu."
        ),
    ] = None
    provider_options: Mapping = None
    session_options: SessionOptions = None
    cache_dir: Folder = None
    local_files_only: Flag = False

    def __post_init__(self) -> None:
        arguments.check_fields(self)

    @property
    def compute_dtype(self) -> str:
        """The torch backend's compute dtype: ``dtype``, else float32."""
        return self.dtype or DEFAULT_DTYPE

    @property
    def lowered_decoder(self) -> str | None:
        """The decoder's dtype where ``decoder_dtype`` departs from the compute dtype (images record it), else None."""
        if self.decoder_dtype in (None, self.compute_dtype):
            return None
        return self.decoder_dtype

    @property
    def weight_options(self) -> bool:
        """Whether a release, or one of its parts, was named."""
        return any(p is not None for p in (self.weights, self.clip, self.vae, self.star))


LOAD_FIELDS = tuple(f.name for f in fields(LoadOptions))
"""The names of the load options, in declaration order."""


@dataclass(frozen=True)
class LoadPlan:
    """What ``load`` loads, every cheap check passed: backend, device, folders, release parts, resolution."""

    spec: BackendSpec
    device: str
    options: LoadOptions
    artifacts: Path | None
    """The artefact folder a graph backend runs."""
    release: ReleasePaths | None
    """The parts the torch backend loads; for a graph backend, the checkpoints its export must come from."""
    resolution: int
    precision: str

    @property
    def backend(self) -> str:
        return self.spec.name

    @property
    def inputs(self) -> list[Path]:
        """Every file and folder the load reads (outputs must stay apart from them)."""
        parts = self.release.inputs if self.release else ()
        return [p for p in (self.options.weights, *parts, self.artifacts) if p is not None]


def plan_load(options: LoadOptions, path: str | Path | None = None) -> LoadPlan:
    """The checked plan of ``options``; ``path`` (from_pretrained's) is a release or an artefact folder, or a repo id.

    The backend defaults to torch with weight options, else to ONNX Runtime (on the demo's graphs
    when no folder is given); its device defaults to the backend's.
    """
    options = with_folders(options, arguments.path("path", path))
    spec = chosen_backend(options)
    refuse_other_backends_options(spec, options)
    device = chosen_device(spec, options)
    spec.check(device, options)
    if spec.needs_artifacts:
        return graphs_plan(spec, device, options)
    return release_plan(spec, device, options)


def chosen_backend(options: LoadOptions) -> BackendSpec:
    """The backend asked for; else torch with weight options (and no artefacts), else ONNX Runtime."""
    if options.backend is not None:
        return backend_spec(options.backend)
    return default_backend(artifacts=options.artifacts is not None or not options.weight_options)


def chosen_device(spec: BackendSpec, options: LoadOptions) -> str:
    """The device asked for, else the backend's default (cuda for TensorRT, else cpu)."""
    return options.device or spec.default_device


def with_folders(options: LoadOptions, path: Path | None) -> LoadOptions:
    """``path`` as the weights or the artefacts it is, and Hub repo ids and cache folders as local folders."""
    hub = functools.partial(option_folder, cache_dir=options.cache_dir, local_files_only=options.local_files_only)
    if path is not None:
        if options.weights is not None or options.artifacts is not None:
            raise ConfigError("give the folder to load as path, or as weights or artifacts, not both")
        folder = hub(path)
        if not folder.exists():
            raise WeightsError(
                f"{folder}: no such file or folder; give a release folder, an artefact folder, a Hub repo id or "
                "None for the demo"
            )
        kind = "artifacts" if is_artifact_folder(folder) else "weights"
        return replace(options, **{kind: folder})
    return replace(options, weights=hub(options.weights), artifacts=hub(options.artifacts))


def is_artifact_folder(folder: Path | None) -> bool:
    """A folder made by ``star-deploy export`` (it holds a manifest.json)."""
    return folder is not None and (folder / MANIFEST).is_file()


def refuse_other_backends_options(spec: BackendSpec, options: LoadOptions) -> None:
    """Refuse options that the chosen backend would silently ignore."""
    from ..backends.registry import BACKENDS

    for owner in BACKENDS.values():
        used = [n for n in owner.options if owner is not spec and getattr(options, n) not in (None, False)]
        if used:
            listed = ", ".join(used)
            raise ConfigError(
                f"{listed} applies to backend={owner.name!r}, not to backend={spec.name!r}; use it with --backend "
                f"{owner.name}, or drop it"
            )


def release_plan(spec: BackendSpec, device: str, options: LoadOptions) -> LoadPlan:
    """A release (the demo's weights without weight options), its parts found and its resolution chosen."""
    if is_artifact_folder(options.weights):
        raise ConfigError(
            f"--weights {options.weights}: an artefact folder from `star-deploy export`; pass it as --artifacts"
        )
    if options.artifacts is not None and options.weights is None:
        graph_backends = " or ".join(repr(name) for name in artifact_backends())
        raise ConfigError(
            f"{options.artifacts}: an artefact folder holds ONNX graphs; use backend={graph_backends} for it"
        )
    star = options.star
    if star is None and options.weights is not None:
        star = star_for_resolution(options.weights, options.resolution)
    release = release_paths(options.weights, options.clip, options.vae, star)
    resolution = choose_resolution(release, options.resolution)
    return LoadPlan(spec, device, options, None, release, resolution, options.compute_dtype)


def graphs_plan(spec: BackendSpec, device: str, options: LoadOptions) -> LoadPlan:
    """An artefact folder (the demo's graphs without one), its resolution, and the release it must come from."""
    from ..demo import DEMO_GRAPHS

    artifacts = options.artifacts
    if artifacts is None and not options.weight_options and spec is default_backend(artifacts=True):
        artifacts = DEMO_GRAPHS
    if artifacts is None:
        raise ConfigError(
            f"--backend {spec.name} runs exported graphs: pass --artifacts DIR, a folder made by `star-deploy export`"
        )
    data = read_manifest(artifacts)
    resolution = parse_config(data["config"], artifacts / MANIFEST).resolution
    if options.resolution is not None and options.resolution != resolution:
        raise ConfigError(
            f"--resolution {options.resolution}: the artefacts in {artifacts} are for {resolution} px; drop "
            "--resolution or export again"
        )
    release = None
    if options.weight_options:
        release = release_paths(options.weights, options.clip, options.vae, options.star)
    return LoadPlan(spec, device, options, artifacts, release, resolution, data["precision"])


def artifact_backends() -> list[str]:
    from ..backends.registry import BACKENDS

    return [spec.name for spec in BACKENDS.values() if spec.needs_artifacts]
