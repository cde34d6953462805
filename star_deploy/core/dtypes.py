"""The one table of tensor element types, by the names the manifest and the CLI use.

Torch-free: each name gives its byte size and its numpy dtype; torch (and TensorRT) types
are looked up by the same name only when asked for, so the base install never imports torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

BYTES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}
"""Element size in bytes of every dtype name; torch and TensorRT call each of them by this same name."""

COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
"""Compute dtypes of the torch backend (and of the memory estimate)."""

NO_NUMPY = ("bfloat16",)
"""Names numpy has no dtype for."""


def check_name(name: str) -> str:
    """``name`` if the table knows it."""
    if name not in BYTES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(BYTES)}")
    return name


def itemsize(name: str) -> int:
    """Bytes of one element of ``name``."""
    return BYTES[check_name(name)]


def tensor_bytes(shape: tuple[int, ...], name: str) -> int:
    """Bytes of a dense tensor of ``shape`` and dtype ``name``."""
    return math.prod(shape) * itemsize(name)


def numpy_type(name: str) -> type[np.generic]:
    """The numpy scalar type called ``name`` (np.float32, ...)."""
    if check_name(name) in NO_NUMPY:
        raise ConfigError(f"numpy has no {name}")
    return np.dtype(name).type


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name`` (imports torch)."""
    import torch

    return getattr(torch, check_name(name))


def check_compute_dtype(name: str) -> str:
    """``name`` if the torch backend computes in it."""
    if name not in COMPUTE_DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(COMPUTE_DTYPES)}")
    return name


def name_of(module: Any, dtype: Any) -> str | None:
    """The table name of ``dtype``, a dtype of ``module`` (tensorrt or torch: both use the table's names)."""
    return next((name for name in BYTES if getattr(module, name, None) == dtype), None)
