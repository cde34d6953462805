"""Per-scale constant tables: normalized 2D RoPE angles and resampling matrices (numpy, no torch).

Resampling between fixed sizes is linear, so torch's bicubic (align_corners=False,
A=-0.75) and area modes become one small matrix per side: ``out = M @ x @ M.T``. That form
exports to every runtime exactly. Every backend reads these same arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from .config import NUM_PHI, StarConfig

CUBIC_A = -0.75


def rope_angles(side: int, head_dim: int, theta: float, norm: float) -> np.ndarray:
    """Angles (side*side, head_dim/2) float32: pairs [0, D/4) rotate by column, [D/4, D/2) by row."""
    n = np.arange(side * side)
    scale = np.float32(norm / (side - 1) if side > 1 else 0.0)
    col = (n % side).astype(np.float32) * scale
    row = (n // side).astype(np.float32) * scale
    quarter = head_dim // 4
    freqs = (1.0 / np.float32(theta) ** (np.arange(quarter, dtype=np.float32) * np.float32(4 / head_dim))).astype(
        np.float32
    )
    return np.concatenate([col[:, None] * freqs, row[:, None] * freqs], axis=1).astype(np.float32)


def _cubic(x: float) -> float:
    """Keys' cubic convolution kernel with A = -0.75 (torch's bicubic)."""
    x = abs(x)
    if x <= 1:
        return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1
    if x < 2:
        return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A
    return 0.0


def bicubic_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) float32: torch's bicubic resize (align_corners=False), borders clamped."""
    m = np.zeros((dst, src), dtype=np.float64)
    ratio = src / dst
    for i in range(dst):
        pos = (i + 0.5) * ratio - 0.5
        base = math.floor(pos)
        t = pos - base
        for offset, weight in zip(range(-1, 3), (_cubic(t + 1), _cubic(t), _cubic(1 - t), _cubic(2 - t))):
            m[i, min(max(base + offset, 0), src - 1)] += weight
    return m.astype(np.float32)


def area_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) float32: adaptive average pooling from ``src`` to ``dst`` cells."""
    m = np.zeros((dst, src), dtype=np.float64)
    for i in range(dst):
        start, end = (i * src) // dst, -((-(i + 1) * src) // dst)
        m[i, start:end] = 1.0 / (end - start)
    return m.astype(np.float32)


def phi_index(scale: int, num_scales: int) -> int:
    """Which of the shared Phi convs refines scale ``scale`` (argmin |ticks - k/(K-1)|)."""
    ticks = np.linspace(1 / (3 * NUM_PHI), 1 - 1 / (3 * NUM_PHI), NUM_PHI, dtype=np.float64)
    return int(np.argmin(np.abs(ticks - scale / (num_scales - 1))))


@dataclass(frozen=True)
class ScaleTables:
    """Everything that differs between scales, as arrays the graphs take as inputs."""

    rope_cos: np.ndarray  # (l, D/2) float32
    rope_sin: np.ndarray  # (l, D/2) float32
    upsample: np.ndarray  # (P, p) float32: bicubic to the last side; identity on the last scale
    downsample: np.ndarray  # (p_next, P) float32: area to the next side; (1, P) on the last scale
    phi_weights: np.ndarray  # (NUM_PHI,) float32 one-hot selection of the Phi conv
    next_level: np.ndarray  # (1,) int64: level embedding row of the next scale
    restore: np.ndarray  # (p, p_prev) float32: area resampling from the previous side (pruned steps)

    def arrays(self) -> dict[str, np.ndarray]:
        """The tables by graph input name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def build_scale_tables(config: StarConfig) -> list[ScaleTables]:
    """The tables of every scale of ``config``'s schedule."""
    t = config.transformer
    sides, last = config.patch_nums, config.final_side
    tables = []
    for k, side in enumerate(sides):
        angles = rope_angles(side, t.head_dim, t.rope_theta, t.rope_norm)
        is_last = k == len(sides) - 1
        up = np.eye(last, dtype=np.float32) if is_last else bicubic_matrix(side, last)
        down = area_matrix(last, 1 if is_last else sides[k + 1])
        phi = np.zeros(NUM_PHI, dtype=np.float32)
        phi[phi_index(k, len(sides))] = 1.0
        nxt = np.array([k if is_last else k + 1], dtype=np.int64)
        restore = area_matrix(sides[k - 1] if k else 1, side)
        tables.append(ScaleTables(np.cos(angles), np.sin(angles), up, down, phi, nxt, restore))
    return tables
