"""A fake ``tensorrt``: exactly the Python API star-deploy and Polygraphy's TensorRT loaders call, enforcing
TensorRT's documented rules.

Not TensorRT: its "engines" run their ONNX graph with ONNX Runtime on the host. See README.md beside it.
"""

from __future__ import annotations

from . import _cuda
from ._builder import Builder, OnnxParser, init_libnvinfer_plugins, read_plan
from ._runtime import Runtime
from ._types import (
    ERRORS,
    BuilderFlag,
    DataType,
    DeviceType,
    ExecutionContextAllocationStrategy,
    ILogger,
    Logger,
    MemoryPoolType,
    NetworkDefinitionCreationFlag,
    TensorIOMode,
)

__version__ = "10.13.3.9"

float32 = DataType.FLOAT
float16 = DataType.HALF
bfloat16 = DataType.BF16
int8 = DataType.INT8
uint8 = DataType.UINT8
int32 = DataType.INT32
int64 = DataType.INT64
bool = DataType.BOOL  # noqa: A001 - tensorrt.bool is the API's name

STATS = _cuda.STATS

__all__ = [
    "ERRORS",
    "STATS",
    "Builder",
    "BuilderFlag",
    "DataType",
    "DeviceType",
    "ExecutionContextAllocationStrategy",
    "ILogger",
    "Logger",
    "MemoryPoolType",
    "NetworkDefinitionCreationFlag",
    "OnnxParser",
    "Runtime",
    "TensorIOMode",
    "init_libnvinfer_plugins",
    "read_plan",
]
