"""Lazy access to the TensorRT Python package and the GPU it runs on."""

from __future__ import annotations

import re
from importlib import metadata
from types import ModuleType

import torch

from ..core import dtypes
from ..core.dtypes import name_of
from ..errors import BackendUnavailableError
from .gpu import cuda
from .sidecar import RuntimeInfo

INSTALL_HINT = (
    "pip install 'star-deploy[tensorrt-cu12]' (CUDA 12 torch) or 'star-deploy[tensorrt-cu13]' (CUDA 13 torch) "
    "on a machine with an NVIDIA GPU"
)
MIN_VERSION = (10, 1)
"""set_device_memory(memory, size) and get_device_memory_size_for_profile_v2 came with 10.1."""
CUDA_WHEEL = re.compile(r"^tensorrt[-_]cu(\d+)(?:[-_]bindings)?$", re.IGNORECASE)


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a one-line error saying what to install."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailableError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    if minor_version(tensorrt.__version__) < MIN_VERSION:
        raise BackendUnavailableError(
            f"TensorRT {tensorrt.__version__} is too old (need >= {MIN_VERSION[0]}.{MIN_VERSION[1]}): {INSTALL_HINT}"
        )
    check_cuda_major(tensorrt_cuda_major(), cuda().cuda_major(), tensorrt.__version__)
    return tensorrt


def wheel_cuda_major(distributions: list[str]) -> int | None:
    """The CUDA major of the wheels that provide ``tensorrt`` (tensorrt_cu12_bindings: 12), None if unnamed."""
    majors = {int(m.group(1)) for name in distributions if (m := CUDA_WHEEL.match(name))}
    return majors.pop() if len(majors) == 1 else None


def tensorrt_cuda_major() -> int | None:
    """The CUDA major the installed TensorRT wheels were built for (None for a tarball install)."""
    return wheel_cuda_major(metadata.packages_distributions().get("tensorrt", []))


def check_cuda_major(tensorrt_major: int | None, torch_major: int | None, version: str) -> None:
    """Refuse a TensorRT built for another CUDA major than torch (its first Builder would fail)."""
    if tensorrt_major is None or torch_major is None or tensorrt_major == torch_major:
        return
    raise BackendUnavailableError(
        f"TensorRT {version} is built for CUDA {tensorrt_major} but torch for CUDA {torch_major}: "
        f"pip uninstall tensorrt tensorrt-cu{tensorrt_major} tensorrt-cu{tensorrt_major}-bindings "
        f"tensorrt-cu{tensorrt_major}-libs, then pip install 'star-deploy[tensorrt-cu{torch_major}]'"
    )


def major_version(version: str) -> int:
    return int(version.split(".", 1)[0])


def minor_version(version: str) -> tuple[int, int]:
    parts = version.split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def cuda_device(device: str | torch.device = "cuda") -> torch.device:
    """A CUDA device for TensorRT, or a clear error when none is visible."""
    return cuda().device(device)


def runtime_info(trt: ModuleType, device: torch.device) -> RuntimeInfo:
    name, capability = cuda().properties(device)
    return RuntimeInfo(trt.__version__, name, capability)


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
