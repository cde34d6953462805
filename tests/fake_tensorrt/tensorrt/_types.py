"""Enums, data types and the logger of the fake, named and valued as the TensorRT Python API has them."""

from __future__ import annotations

import enum
import logging

import numpy as np

ERRORS: list[str] = []
"""Every error the fake reported through a logger, in order (tests read and clear it)."""


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    BF16 = 7
    INT64 = 8


NUMPY = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
    DataType.INT64: np.int64,
}
ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL}
ONNX_TYPES |= {2: DataType.UINT8, 16: DataType.BF16, 7: DataType.INT64}


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class ExecutionContextAllocationStrategy(enum.IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4
    DISABLE_TIMING_CACHE = 5
    TF32 = 6
    FP8 = 15
    BF16 = 17


TYPED_PRECISION_FLAGS = (BuilderFlag.FP16, BuilderFlag.INT8, BuilderFlag.FP8, BuilderFlag.BF16)
"""The flags that choose precisions, which a strongly typed network takes from its types instead."""


class DeviceType(enum.IntEnum):
    GPU = 0
    DLA = 1


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class ILogger:
    """trt.ILogger: the base class of loggers written in Python (Polygraphy's logger derives from it)."""

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

    def __init__(self) -> None:
        pass

    def log(self, severity: int, message: str) -> None:
        raise NotImplementedError


class Logger(ILogger):
    """trt.Logger: messages at or above ``min_severity`` go to Python logging ("tensorrt")."""

    def __init__(self, min_severity: int = ILogger.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity

    def log(self, severity: int, message: str) -> None:
        if severity <= self.min_severity:
            level = logging.ERROR if severity <= self.ERROR else logging.WARNING if severity == 2 else logging.INFO
            logging.getLogger("tensorrt").log(level, message)


def refuse(logger: ILogger, message: str) -> None:
    """Report an API usage error the way TensorRT does: on the logger, then the call returns its failure value."""
    ERRORS.append(f"API Usage Error ({message})")
    logger.log(ILogger.ERROR, f"API Usage Error ({message})")
