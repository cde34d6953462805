"""Lazy access to the TensorRT Python package and the GPU it runs on."""

from __future__ import annotations

from types import ModuleType

import torch

from .. import dtypes
from ..dtypes import name_of
from ..errors import BackendUnavailableError
from .sidecar import RuntimeInfo

INSTALL_HINT = "pip install 'star-deploy[tensorrt]' (tensorrt>=10.0) on a machine with an NVIDIA GPU"
MIN_MAJOR = 10


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a one-line error saying what to install."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailableError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    if major_version(tensorrt.__version__) < MIN_MAJOR:
        raise BackendUnavailableError(
            f"TensorRT {tensorrt.__version__} is too old (need >= {MIN_MAJOR}.0): {INSTALL_HINT}"
        )
    return tensorrt


def major_version(version: str) -> int:
    return int(version.split(".", 1)[0])


def minor_version(version: str) -> tuple[int, int]:
    parts = version.split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def cuda_device(device: str | torch.device = "cuda") -> torch.device:
    """A CUDA device for TensorRT, or a clear error when none is visible."""
    dev = torch.device(device)
    if dev.type != "cuda":
        raise BackendUnavailableError(f"TensorRT runs on CUDA GPUs only; use --device cuda (got {device})")
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            "TensorRT needs a CUDA GPU, and PyTorch sees none (check the driver and a CUDA build of torch)"
        )
    return torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())


def runtime_info(trt: ModuleType, device: torch.device) -> RuntimeInfo:
    major, minor = torch.cuda.get_device_capability(device)
    return RuntimeInfo(trt.__version__, torch.cuda.get_device_name(device), f"{major}.{minor}")


def make_logger(trt: ModuleType):
    """A TensorRT logger at WARNING (INFO with --verbose)."""
    import logging

    verbose = logging.getLogger("star_deploy").isEnabledFor(logging.DEBUG)
    return trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)


def torch_dtype(trt: ModuleType, dtype) -> torch.dtype:
    """torch dtype of a ``tensorrt.DataType`` (TensorRT names its types as the dtype table does)."""
    name = name_of(trt, dtype)
    if name is None:
        raise BackendUnavailableError(f"engine tensor type {dtype} has no torch equivalent")
    return dtypes.torch_dtype(name)
