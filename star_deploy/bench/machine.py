"""The machine a benchmark ran on, its measured matmul throughput, and peak memory probes."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.cpu_isa import bf16_isa, cpu_flags, cpu_name, int8_isa

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def machine_info(device: torch.device) -> dict:
    """What the figures depend on: CPU, threads, ISA, GPU, library versions, load."""
    info = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_flags(),
        "int8_isa": int8_isa(cpu_flags()),
        "bf16_isa": bf16_isa(cpu_flags()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU_MATMUL = (512, 1024, 4096)
GPU_MATMUL = (8192, 8192, 8192)
"""(m, k, n) of the throughput probe: a GPU needs a large product to reach its peak."""


def matmul_throughput(dtype: torch.dtype, device: torch.device, seconds: float = 1.0) -> float:
    """Best measured FLOP/s of an (m, k) x (k, n) linear layer in ``dtype``: the floor's divisor."""
    m, k, n = GPU_MATMUL if device.type == "cuda" else CPU_MATMUL
    x = torch.randn(m, k, device=device).to(dtype)
    w = torch.randn(n, k, device=device).to(dtype)
    with torch.inference_mode():
        torch.nn.functional.linear(x, w)
        best, deadline = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            sync(device)
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            sync(device)
            best = min(best, time.perf_counter() - start)
    return 2.0 * m * k * n / best


def copy_bandwidth(device: torch.device, seconds: float = 0.5) -> float:
    """Best measured bytes/s (read + written) of a large device-to-device copy: the memory roof."""
    n = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.ones(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n / best


@dataclass(frozen=True)
class Roofs:
    """The machine's measured ceilings: matmul FLOP/s per dtype name and copy bytes/s."""

    matmul_flops_per_s: dict[str, float]
    copy_bytes_per_s: float

    def best(self, other: Roofs) -> Roofs:
        """The higher of two measurements of each ceiling (a shared machine only ever slows a probe down)."""
        flops = {d: max(v, other.matmul_flops_per_s.get(d, 0.0)) for d, v in self.matmul_flops_per_s.items()}
        return Roofs(flops, max(self.copy_bytes_per_s, other.copy_bytes_per_s))


def measure_roofs(dtypes: dict[str, torch.dtype], device: torch.device) -> Roofs:
    """Probe the matmul throughput of each named dtype and the copy bandwidth on ``device``."""
    flops = {name: matmul_throughput(dtype, device) for name, dtype in dtypes.items()}
    return Roofs(flops, copy_bandwidth(device))


class PeakMemory:
    """Peak memory while a block runs: CUDA allocator peak on GPU, process peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                PROC_CLEAR_REFS.write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak_bytes = peak_rss_bytes()


def peak_rss_bytes() -> int:
    """VmHWM of this process (0 where /proc is not available)."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
