"""Per-scale constant tables: normalized 2D RoPE angles and resampling matrices.

Both are computed in float32 once per schedule. Resampling between fixed sizes is linear,
so torch's bicubic (align_corners=False, A=-0.75) and area modes become one small matrix
per side: ``out = M @ x @ M.T``. That form exports to every runtime exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..config import NUM_PHI, StarConfig


def rope_angles(side: int, head_dim: int, theta: float, norm: float) -> torch.Tensor:
    """Angles (side*side, head_dim/2): pairs [0, D/4) rotate by column, [D/4, D/2) by row."""
    n = torch.arange(side * side)
    scale = norm / (side - 1) if side > 1 else 0.0
    col = (n % side).to(torch.float32) * scale
    row = (n // side).to(torch.float32) * scale
    quarter = head_dim // 4
    freqs = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float32) * 4 / head_dim)
    return torch.cat([col[:, None] * freqs, row[:, None] * freqs], dim=1)


def resample_matrix(src: int, dst: int, mode: str) -> torch.Tensor:
    """(dst, src) matrix M with interpolate(x, dst, mode) == M @ x @ M.T along both axes."""
    basis = torch.eye(src, dtype=torch.float64).reshape(src, 1, src, 1)
    kwargs = {"align_corners": False} if mode == "bicubic" else {}
    cols = F.interpolate(basis.float(), size=(dst, 1), mode=mode, **kwargs)
    return cols.reshape(src, dst).T.contiguous()


def phi_index(scale: int, num_scales: int) -> int:
    """Which of the shared Phi convs refines scale ``scale`` (argmin |ticks - k/(K-1)|)."""
    ticks = torch.linspace(1 / (3 * NUM_PHI), 1 - 1 / (3 * NUM_PHI), NUM_PHI, dtype=torch.float64)
    at = scale / (num_scales - 1)
    return int(torch.argmin((ticks - at).abs()).item())


@dataclass(frozen=True)
class ScaleTables:
    """Everything that differs between scales, as tensors the graphs take as inputs."""

    rope_cos: torch.Tensor  # (l, D/2)
    rope_sin: torch.Tensor  # (l, D/2)
    upsample: torch.Tensor  # (P, p): bicubic to the last side; identity on the last scale
    downsample: torch.Tensor  # (p_next, P): area to the next side; (1, P) on the last scale
    phi_weights: torch.Tensor  # (NUM_PHI,) one-hot selection of the Phi conv
    next_level: torch.Tensor  # (1,) int64: level embedding row of the next scale

    def to(self, device: torch.device | str) -> "ScaleTables":
        return ScaleTables(*(getattr(self, f.name).to(device) for f in fields(self)))


def build_scale_tables(config: StarConfig) -> list[ScaleTables]:
    """The tables of every scale of ``config``'s schedule."""
    t = config.transformer
    sides, last = config.patch_nums, config.final_side
    tables = []
    for k, side in enumerate(sides):
        angles = rope_angles(side, t.head_dim, t.rope_theta, t.rope_norm)
        is_last = k == len(sides) - 1
        up = torch.eye(last) if is_last else resample_matrix(side, last, "bicubic")
        down = resample_matrix(last, 1 if is_last else sides[k + 1], "area")
        phi = torch.zeros(NUM_PHI)
        phi[phi_index(k, len(sides))] = 1.0
        nxt = torch.tensor([k if is_last else k + 1], dtype=torch.int64)
        tables.append(ScaleTables(angles.cos(), angles.sin(), up, down, phi, nxt))
    return tables
