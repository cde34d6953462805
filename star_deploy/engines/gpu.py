"""Every CUDA call of the TensorRT layer, behind one small seam: devices, streams, aligned buffers.

``cuda()`` is torch's CUDA runtime. The TensorRT builder and backend call nothing else of CUDA,
so a host implementation of the same methods (the test suite's fake TensorRT installs one with
``use_runtime``) runs the engine code on a machine without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch

from ..errors import BackendUnavailableError

ALIGNMENT = 256
"""Bytes: TensorRT refuses a tensor address with less alignment (IExecutionContext::setTensorAddress)."""


class Stream(Protocol):
    handle: int

    def enqueue(self, work: Callable[[int], bool]) -> bool:
        """Run ``work(handle)`` ordered after the caller's current stream, and the caller's stream after it."""


class Runtime(Protocol):
    def device(self, name: str | torch.device) -> torch.device: ...
    def memory_device(self, device: torch.device) -> torch.device: ...
    def current(self, device: torch.device): ...
    def properties(self, device: torch.device) -> tuple[str, str]: ...
    def cuda_major(self) -> int | None: ...
    def stream(self, device: torch.device) -> Stream: ...
    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor: ...
    def release_cached(self, device: torch.device) -> None: ...
    def total_memory(self, device: torch.device) -> int: ...


class CudaStream:
    """A torch CUDA stream that TensorRT enqueues on."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.handle = self.stream.cuda_stream

    def enqueue(self, work: Callable[[int], bool]) -> bool:
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        ok = work(self.handle)
        current.wait_stream(self.stream)
        return ok


class CudaRuntime:
    """torch's CUDA: the runtime of a real GPU."""

    def device(self, name: str | torch.device) -> torch.device:
        """A CUDA device that exists here, or a one-line error."""
        dev = torch.device(name)
        if dev.type != "cuda":
            raise BackendUnavailableError(f"TensorRT runs on CUDA GPUs only; use --device cuda (got {name})")
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                "TensorRT needs a CUDA GPU, and PyTorch sees none (check the driver and a CUDA build of torch)"
            )
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise BackendUnavailableError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        return torch.device("cuda", index)

    def memory_device(self, device: torch.device) -> torch.device:
        return device

    def current(self, device: torch.device):
        """Make ``device`` current for this thread (TensorRT uses the current device, like cudaSetDevice)."""
        return torch.cuda.device(device)

    def properties(self, device: torch.device) -> tuple[str, str]:
        major, minor = torch.cuda.get_device_capability(device)
        return torch.cuda.get_device_name(device), f"{major}.{minor}"

    def cuda_major(self) -> int | None:
        return int(torch.version.cuda.split(".")[0]) if torch.version.cuda else None

    def stream(self, device: torch.device) -> CudaStream:
        return CudaStream(device)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised buffer; the CUDA caching allocator aligns every block to 512 bytes."""
        return torch.empty(shape, dtype=dtype, device=device)

    def total_memory(self, device: torch.device) -> int:
        """The GPU's memory in bytes (cudaDeviceProp::totalGlobalMem)."""
        return torch.cuda.get_device_properties(device).total_memory

    def release_cached(self, device: torch.device) -> None:
        """Give torch's cached, unused blocks back to the driver (TensorRT allocates with cudaMalloc, outside them)."""
        with torch.cuda.device(device):
            torch.cuda.empty_cache()


_RUNTIME: list[Runtime] = [CudaRuntime()]


def cuda() -> Runtime:
    """The CUDA runtime in use."""
    return _RUNTIME[-1]


@contextmanager
def use_runtime(runtime: Runtime) -> Iterator[Runtime]:
    """Run the TensorRT layer on ``runtime`` inside the block (a host runtime for tests)."""
    _RUNTIME.append(runtime)
    try:
        yield runtime
    finally:
        _RUNTIME.remove(runtime)


def aligned(address: int) -> bool:
    return address % ALIGNMENT == 0
