"""What the scale loop needs from a backend whose arrays are torch tensors (torch, eager, TensorRT)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..config import SamplingConfig, StarConfig
from ..tables import build_scale_tables
from .torch_sampling import make_sampler


def device_tables(config: StarConfig, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Every scale's tables as tensors on ``device``, by graph input name."""
    return [{k: torch.from_numpy(v).to(device) for k, v in t.arrays().items()} for t in build_scale_tables(config)]


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
