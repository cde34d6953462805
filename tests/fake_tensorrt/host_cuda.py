"""The host implementation of ``star_deploy.engines.gpu``: the fake TensorRT's GPUs, streams and memory."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensorrt import _cuda

from star_deploy.engines.gpu import ALIGNMENT
from star_deploy.errors import BackendUnavailableError


class HostStream:
    """A stream of a fake GPU: work runs at once, on the host."""

    def __init__(self, device: int) -> None:
        self.handle = _cuda.create_stream(device)

    def enqueue(self, work: Callable[[int], bool]) -> bool:
        return work(self.handle)


class HostRuntime:
    """Fake GPUs whose memory is host memory: tensors live on the CPU, 256-byte aligned when allocated here."""

    def __init__(self, cuda_major: int = 12) -> None:
        self.major = cuda_major

    def device(self, name: str | torch.device) -> torch.device:
        dev = torch.device(name)
        if dev.type != "cuda":
            raise BackendUnavailableError(f"TensorRT runs on CUDA GPUs only; use --device cuda (got {name})")
        index = dev.index if dev.index is not None else _cuda.current_device()
        if index >= len(_cuda.DEVICES):
            raise BackendUnavailableError(f"--device {name}: this machine has {len(_cuda.DEVICES)} CUDA GPU(s)")
        return torch.device("cuda", index)

    def memory_device(self, device: torch.device) -> torch.device:
        return torch.device("cpu")

    def current(self, device: torch.device):
        return _cuda.device_context(device.index)

    def properties(self, device: torch.device) -> tuple[str, str]:
        return _cuda.DEVICES[device.index]

    def cuda_major(self) -> int | None:
        return self.major

    def stream(self, device: torch.device) -> HostStream:
        return HostStream(device.index)

    def total_memory(self, device: torch.device) -> int:
        return _cuda.MEMORY[device.index]

    def release_cached(self, device: torch.device) -> None:
        """torch.cuda.empty_cache on ``device``: counted (the fake's GPUs hold no torch cache)."""
        _cuda.STATS.cache_releases += 1

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A host buffer at a 256-byte aligned address, registered as fake device memory."""
        size = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        base = torch.empty(size + ALIGNMENT, dtype=torch.uint8)
        offset = -base.data_ptr() % ALIGNMENT
        view = base[offset : offset + size].view(dtype).view(shape)
        _cuda.register(view.data_ptr(), size, view)
        return view
