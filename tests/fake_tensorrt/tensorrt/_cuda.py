"""The fake's CUDA: two GPUs, the current device of each thread, streams, and host "device" memory."""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

DEVICES = [("NVIDIA A100-SXM4-80GB", "8.0"), ("NVIDIA H100 80GB HBM3", "9.0")]
"""(name, compute capability) of each fake GPU, by index."""
MEMORY = [80 * 2**30, 80 * 2**30]
"""Memory in bytes of each fake GPU (cudaDeviceProp::totalGlobalMem, about 80 GiB on both); a test may shrink it."""


@dataclass
class Stats:
    """What the tests read back: context memory held, profile switches, executions, torch cache releases."""

    context_memory: int = 0
    profile_switches: int = 0
    executions: int = 0
    cache_releases: int = 0


STATS = Stats()
_local = threading.local()
_streams: dict[int, int] = {}
_allocations: dict[int, tuple[int, object]] = {}
_next_stream = [0x5000]


def current_device() -> int:
    """cudaGetDevice: a thread that never set one runs on device 0 (CUDA runtime default)."""
    return getattr(_local, "device", 0)


@contextmanager
def device_context(index: int):
    """cudaSetDevice for the block, restored after (what torch.cuda.device does)."""
    if not 0 <= index < len(DEVICES):
        raise RuntimeError(f"invalid device ordinal {index}")
    previous = current_device()
    _local.device = index
    try:
        yield
    finally:
        _local.device = previous


def create_stream(device: int) -> int:
    """cudaStreamCreate on ``device``: a stream belongs to the device it was created on."""
    handle = _next_stream[0]
    _next_stream[0] += 0x10
    _streams[handle] = device
    return handle


def stream_device(handle: int) -> int | None:
    return _streams.get(handle)


def register(address: int, size: int, owner: object) -> None:
    """Record a host "device" allocation, forgotten when ``owner`` is freed."""
    token = object()
    _allocations[address] = (size, token)
    weakref.finalize(owner, _forget, address, token)


def _forget(address: int, token: object) -> None:
    if _allocations.get(address, (0, None))[1] is token:
        del _allocations[address]


def room(address: int) -> int | None:
    """Bytes from ``address`` to the end of its registered allocation (None: not a registered one)."""
    for start, (size, _) in list(_allocations.items()):
        if start <= address < start + size or (size == 0 and address == start):
            return start + size - address
    return None


def reset() -> None:
    _local.device = 0
    STATS.context_memory = STATS.profile_switches = STATS.executions = STATS.cache_releases = 0
