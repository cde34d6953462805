"""Create a backend by name from a loaded model or an artefact directory (imports each runtime lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..artifacts.manifest import Manifest, load_manifest
from ..core.dtypes import check_compute_dtype, torch_dtype
from ..errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from ..release.weights import StarTorchModel

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def default_device(backend: str, device: str | None) -> str:
    """The device asked for, else cuda for TensorRT and cpu for the rest."""
    return device if device is not None else ("cuda" if backend == "tensorrt" else "cpu")


def check_device_name(device: str) -> None:
    """Refuse a device name other than cpu, cuda and cuda:N."""
    index = device.removeprefix("cuda:")
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and index.isdigit()):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N")


def check_backend_device(backend: str, device: str) -> None:
    """``check_device`` for ``backend``: TensorRT checks its GPU through its own CUDA seam (engines.gpu)."""
    if backend != "tensorrt":
        check_device(device)
        return
    from ..engines.trt_api import cuda_device, import_tensorrt

    import_tensorrt()
    check_device_name(device)
    cuda_device(device)


def check_device(device: str) -> None:
    """Refuse an unknown device, or a CUDA device this machine does not have (before any model loads).

    Without PyTorch only the name is checked; ONNX Runtime checks its own providers.
    """
    check_device_name(device)
    try:
        import torch
    except ImportError:
        return
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is visible to PyTorch; use --device cpu")
    index = device.removeprefix("cuda:")
    if device.startswith("cuda:") and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(
            f"--device {device}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1}); choose one of them"
        )


def needs_artifacts(backend: str) -> bool:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend != "torch"


def artifacts_manifest(artifacts: Path | None, backend: str) -> Manifest:
    if artifacts is None:
        raise ConfigError(
            f"--backend {backend} runs exported graphs: pass --artifacts DIR (made by `star-deploy export`)"
        )
    return load_manifest(artifacts)


def create_backend(
    backend: str,
    device: str = "cpu",
    model: StarTorchModel | None = None,
    manifest: Manifest | None = None,
    dtype: str = "float32",
    threads: int = 0,
    cuda_graphs: bool = False,
    compile_step: bool = False,
    compile_cache: Path | None = None,
    provider: str | None = None,
    provider_options: dict[str, Any] | None = None,
    session_options: Any = None,
):
    """The named backend on ``device``: torch runs ``model``, the others run ``manifest``.

    ``cuda_graphs``, ``compile_step`` (torch.compile of the transformer block) and
    ``compile_cache`` (the folder keeping what it compiled) apply to torch.
    """
    if backend == "tensorrt":
        from .trt_backend import TrtBackend

        return TrtBackend(manifest, device)
    if backend == "torch":
        check_device(device)
        dt = torch_dtype(check_compute_dtype(dtype))
        from .torch_backend import TorchBackend

        if cuda_graphs and not device.startswith("cuda"):
            raise ConfigError("CUDA graphs need --device cuda")
        return TorchBackend(model, device, dt, cuda_graphs, compile_step, compile_cache=compile_cache)
    if backend == "onnxruntime":
        check_device_name(device)
        from .ort_backend import OrtBackend

        return OrtBackend(manifest, device, threads, provider, provider_options, session_options)
    raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
