"""What the scale loop needs from a backend whose arrays are torch tensors (torch, eager, TensorRT)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..core.config import SamplingConfig, StarConfig
from ..core.tables import build_scale_tables
from .base import Clock, HostClock
from .torch_sampling import make_sampler


def device_tables(config: StarConfig, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Every scale's tables as tensors on ``device``, by graph input name."""
    return [{k: torch.from_numpy(v).to(device) for k, v in t.arrays().items()} for t in build_scale_tables(config)]


class CudaEventClock:
    """Stage timing on a CUDA stream: each mark records an event; reading waits once, for the last one."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def seconds(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        end.synchronize()
        return start.elapsed_time(end) / 1000.0


class TorchArrays:
    """Host/device conversions, f_hat allocation and samplers on ``self.device``."""

    config: StarConfig
    device: torch.device

    def asarray(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A host array (or a tensor anywhere) on this backend's device."""
        return torch.as_tensor(array).to(self.device)

    def to_numpy(self, tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().cpu().numpy()

    def new_f_hat(self, batch: int) -> torch.Tensor:
        side, cvae = self.config.final_side, self.config.vae.cvae
        return torch.zeros(batch, cvae, side, side, device=self.device)

    def sampler(self, sampling: SamplingConfig, seeds: Sequence[int]):
        return make_sampler(sampling, seeds, self.config.num_scales, self.device)

    def cached_kv(self) -> list[np.ndarray]:
        """The filled KV-cache prefix: keys of every layer, then values."""
        return [self.to_numpy(t) for t in self.cache.past()]

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def clock(self) -> Clock:
        """CUDA events on a GPU (no wait inside the loop); the host clock on CPU, where every op has finished."""
        if self.device.type == "cuda":
            return CudaEventClock(self.device)
        return HostClock(self.synchronize)
