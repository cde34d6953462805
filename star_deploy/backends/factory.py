"""Create a backend by name from a loaded model or an artefact directory."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..export.manifest import Manifest, load_manifest
from ..weights import StarModel

BACKENDS = ("torch", "onnxruntime", "tensorrt")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_device(backend: str, device: str | None) -> str:
    """The device asked for, else cuda for TensorRT and cpu for the rest."""
    return device or ("cuda" if backend == "tensorrt" else "cpu")


def check_device(device: str) -> None:
    """Refuse an unknown device, or a CUDA device this machine does not have (before any model loads)."""
    index = device.removeprefix("cuda:")
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and index.isdigit()):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is visible to PyTorch; use --device cpu")
    if device.startswith("cuda:") and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"--device {device}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1}); choose one of them")


def needs_artifacts(backend: str) -> bool:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend != "torch"


def artifacts_manifest(artifacts: Path | None, backend: str) -> Manifest:
    if artifacts is None:
        raise ConfigError(f"--backend {backend} runs exported graphs: pass --artifacts DIR (made by `star-deploy export`)")
    return load_manifest(artifacts)


def create_backend(
    backend: str,
    device: str = "cpu",
    model: StarModel | None = None,
    manifest: Manifest | None = None,
    dtype: str = "float32",
    threads: int = 0,
    cuda_graphs: bool = False,
):
    """The named backend on ``device``: torch runs ``model``, the others run ``manifest``."""
    if backend == "tensorrt":
        from .trt_backend import TrtBackend

        return TrtBackend(manifest, device)
    check_device(device)
    if backend == "torch":
        if dtype not in TORCH_DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(TORCH_DTYPES)}")
        from .torch_backend import TorchBackend

        if cuda_graphs and not device.startswith("cuda"):
            raise ConfigError("CUDA graphs need --device cuda")
        return TorchBackend(model, device, TORCH_DTYPES[dtype], cuda_graphs)
    if backend == "onnxruntime":
        from .ort_backend import OrtBackend

        return OrtBackend(manifest, device, threads)
    raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
