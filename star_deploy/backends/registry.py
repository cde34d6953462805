"""Every backend, declared once: what it runs, on which devices, with which options, from which extra.

The load plan (``star_deploy.runtime.plan``), the API, the commands, the server and the benchmark
read this table and never compare backend names themselves. A new runtime is one module in this
folder and one ``BackendSpec`` in ``BACKENDS``; ``tests/test_backend_contract.py`` then tests it.
Factories and checks import their runtime lazily, so reading the table needs neither torch nor a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.extras import require_installed
from ..errors import ConfigError
from .devices import check_device_name, check_torch_device, is_cuda

WEIGHTS = "weights"
"""A backend that runs a weight release (PyTorch)."""
ARTIFACTS = "artifacts"
"""A backend that runs an artefact folder made by ``star-deploy export``."""

Options = Any
"""The load options a factory and a check read (``star_deploy.runtime.plan.LoadOptions``, a layer above)."""


@dataclass(frozen=True)
class BenchVariant:
    """One line of ``star-deploy bench``: the backend with some load options, on an export of some precision."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    """Load options set for this line (``cuda_graphs``, ``compile``)."""
    precision: str = "fp32"
    """The artefacts it runs (a backend that runs artefacts)."""
    needs_cuda: bool = False
    compute_dtype: str | None = None
    """The dtype of its matmuls for the compute floor; None: the backend's own dtype."""


@dataclass(frozen=True)
class MemoryProfile:
    """What a backend's generation holds beyond the model's tensors, measured on the CPU (``tests/test_memory.py``)."""

    decode_buffers: float = 8.0
    """Full-resolution decoder feature maps (``vae.ch`` channels) alive at once at the decode's peak, per image."""
    overhead: int = 0
    """Bytes a call takes whatever its batch (the allocator's slack)."""


@dataclass(frozen=True)
class BackendSpec:
    """One backend: everything the rest of the package needs to know about it."""

    name: str
    summary: str
    """What it is, for help texts."""
    runs: str
    """``WEIGHTS`` or ``ARTIFACTS``."""
    default_device: str
    check: Callable[[str, Options], None]
    """Refuses a device (and the backend's own options) before anything loads."""
    options: tuple[str, ...]
    """Load options that apply to this backend alone (refused for the others)."""
    module: str
    """The top-level module of its runtime."""
    extra: str | None
    """The extra that installs that runtime; None: the base install."""
    create: Callable[[Any, str, Options], Any]
    """(model or manifest, device, options) -> a ``Backend``."""
    bench: tuple[BenchVariant, ...] = ()
    memory: MemoryProfile = MemoryProfile()
    """Its working memory, for the estimates that refuse a load or a call that cannot fit."""
    engines: bool = False
    """Runs engines that ``star-deploy build-engine`` built for fixed batch sizes (``check`` validates them)."""

    @property
    def needs_artifacts(self) -> bool:
        return self.runs == ARTIFACTS


def _check_torch(device: str, options: Options) -> None:
    require_installed("torch", "--backend torch")
    check_torch_device(device)
    if options.cuda_graphs and not is_cuda(device):
        raise ConfigError("--cuda-graphs applies to --backend torch with --device cuda")


def _create_torch(model: Any, device: str, options: Options) -> Any:
    import torch

    from ..core.dtypes import torch_dtype
    from .torch_backend import TorchBackend

    if options.threads and not is_cuda(device):
        torch.set_num_threads(options.threads)
    dtype = torch_dtype(options.compute_dtype)
    decoder = torch_dtype(options.decoder_dtype or options.compute_dtype)
    return TorchBackend(
        model,
        device,
        dtype,
        options.cuda_graphs,
        options.compile,
        compile_cache=options.compile_cache,
        decoder_dtype=decoder,
    )


def _check_onnxruntime(device: str, options: Options) -> None:
    from .ort_sessions import check_provider

    check_device_name(device)
    check_provider(options.provider, device)


def _create_onnxruntime(manifest: Any, device: str, options: Options) -> Any:
    from .ort_backend import OrtBackend

    return OrtBackend(
        manifest, device, options.threads, options.provider, options.provider_options, options.session_options
    )


def _check_tensorrt(device: str, options: Options) -> None:
    from ..engines.trt_api import cuda_device, import_tensorrt

    import_tensorrt()
    check_device_name(device)
    cuda_device(device)


def _create_tensorrt(manifest: Any, device: str, options: Options) -> Any:
    from .trt_backend import TrtBackend

    return TrtBackend(manifest, device)


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            name="torch",
            summary="the PyTorch reference on a release's weights",
            runs=WEIGHTS,
            default_device="cpu",
            check=_check_torch,
            options=("dtype", "decoder_dtype", "cuda_graphs", "compile", "compile_cache"),
            module="torch",
            extra="torch",
            create=_create_torch,
            memory=MemoryProfile(decode_buffers=6.5, overhead=48 * 2**20),
            bench=(
                BenchVariant("torch"),
                BenchVariant("torch-cuda-graphs", {"cuda_graphs": True}, needs_cuda=True),
                BenchVariant("torch-compiled", {"compile": True}),
                BenchVariant("torch-compiled-cuda-graphs", {"cuda_graphs": True, "compile": True}, needs_cuda=True),
            ),
        ),
        BackendSpec(
            name="onnxruntime",
            summary="ONNX Runtime on an export, any installed execution provider (no torch)",
            runs=ARTIFACTS,
            default_device="cpu",
            check=_check_onnxruntime,
            options=("provider", "provider_options", "session_options"),
            module="onnxruntime",
            extra=None,
            create=_create_onnxruntime,
            memory=MemoryProfile(decode_buffers=10.0),
            bench=(
                BenchVariant("onnxruntime"),
                BenchVariant("onnxruntime-int8", precision="int8"),
                BenchVariant("onnxruntime-int8-dynamic", precision="int8-dynamic"),
                BenchVariant("onnxruntime-int8-mixed", precision="int8-mixed"),
            ),
        ),
        BackendSpec(
            name="tensorrt",
            summary="TensorRT engines built from an export (star-deploy build-engine), on an NVIDIA GPU",
            runs=ARTIFACTS,
            default_device="cuda",
            check=_check_tensorrt,
            options=(),
            module="tensorrt",
            extra="tensorrt-cu12",
            create=_create_tensorrt,
            bench=(BenchVariant("tensorrt", compute_dtype="float16"),),
            engines=True,
        ),
    )
}
"""Every backend, the default for weights first, then the default for artefacts."""


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def backend_spec(name: str) -> BackendSpec:
    """The backend called ``name``; an unknown name is refused, listing the known ones."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def check_backend_name(name: str | None) -> str | None:
    """None (the default for the folder) or a known backend's name."""
    if name is not None:
        backend_spec(name)
    return name


def engine_backends() -> list[BackendSpec]:
    """The backends that run built engines."""
    return [spec for spec in BACKENDS.values() if spec.engines]


def default_backend(artifacts: bool) -> BackendSpec:
    """The first backend that runs artefact folders (``artifacts``), else the first that runs weights."""
    return next(spec for spec in BACKENDS.values() if spec.needs_artifacts == artifacts)


def bench_variants() -> dict[str, tuple[BackendSpec, BenchVariant]]:
    """Every ``star-deploy bench`` line of every backend, by name."""
    return {variant.name: (spec, variant) for spec in BACKENDS.values() for variant in spec.bench}


def help_list() -> str:
    """The backends for help texts: "torch, onnxruntime or tensorrt"."""
    names = list(BACKENDS)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
