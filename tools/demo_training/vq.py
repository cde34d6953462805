"""Training side of the demo's multi-scale VQVAE: a light encoder and VAR's residual quantization.

The decoder, codebook, Phi convs and ``post_quant_conv`` are those of ``StarVQVAE``, so the
saved state dict loads with ``star_deploy.release.weights``; ``encoder.`` and ``quant_conv.`` are
extra keys that the loader ignores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from star_deploy.core.config import VaeConfig
from star_deploy.core.tables import area_matrix, bicubic_matrix, phi_index
from star_deploy.model.vqvae import AttnBlock, ResnetBlock, StarVQVAE


class DemoEncoder(nn.Module):
    """Image (B, 3, 16P, 16P) in [-1, 1] -> features (B, Cvae, P, P).

    A linear path (the image's mean colour per latent cell) plus a conv path (four strided
    convs and two res blocks) that starts at zero. No normalization on the output path: with
    few channels per group, GroupNorm would erase the absolute colour of flat regions.
    """

    def __init__(self, ch: int, cvae: int) -> None:
        super().__init__()
        widths = (ch, ch, 2 * ch, 2 * ch)
        self.conv_in = nn.Conv2d(3, widths[0], 4, 2, 1)
        self.down = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1) for i in range(len(widths) - 1))
        self.mid = nn.Sequential(ResnetBlock(widths[-1], widths[-1]), ResnetBlock(widths[-1], widths[-1]))
        self.conv_out = nn.Conv2d(widths[-1], cvae, 3, 1, 1)
        self.skip = nn.Conv2d(3, cvae, 1)
        self.factor = 2 ** len(widths)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        identity_init(self.skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for conv in self.down:
            h = conv(F.silu(h))
        return self.conv_out(F.silu(self.mid(h))) + self.skip(F.avg_pool2d(x, self.factor))


def identity_init(conv: nn.Conv2d) -> None:
    """Weights that copy input channel i to output channel i at the kernel centre, zero bias."""
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    k = conv.kernel_size[0] // 2
    with torch.no_grad():
        for i in range(min(conv.in_channels, conv.out_channels)):
            conv.weight[i, i, k, k] = 1.0


def zero_residual_branches(module: nn.Module) -> None:
    """Start every res block and attention block as the identity (last conv of the branch zeroed).

    The decoder's main path then starts shallow, which lets it learn flat colours in a few
    hundred steps instead of thousands.
    """
    for m in module.modules():
        last = m.conv2 if isinstance(m, ResnetBlock) else m.proj_out if isinstance(m, AttnBlock) else None
        if last is not None:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)


class TrainableVQVAE(StarVQVAE):
    """``StarVQVAE`` plus an encoder and ``quant_conv``, the parts only training needs."""

    def __init__(self, config: VaeConfig) -> None:
        super().__init__(config)
        self.encoder = DemoEncoder(config.ch, config.cvae)
        self.quant_conv = nn.Conv2d(config.cvae, config.cvae, 3, 1, 1)
        identity_init(self.quant_conv)
        zero_residual_branches(self)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous features f (B, Cvae, P, P) of images in [0, 1]."""
        return self.quant_conv(self.encoder(images * 2 - 1))

    def reconstruct(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Unclamped decoder output in [-1, 1] scale (the training target's range)."""
        return self.decoder(self.post_quant_conv(f_hat))


@dataclass(frozen=True)
class QuantTables:
    """Per-scale resampling matrices of a schedule, as inference uses them."""

    sides: tuple[int, ...]
    down: list[torch.Tensor]  # (p_k, P) area
    up: list[torch.Tensor]  # (P, p_k) bicubic; identity on the last scale
    phi: list[int]


def quant_tables(sides: tuple[int, ...]) -> QuantTables:
    last = sides[-1]
    down = [torch.from_numpy(area_matrix(last, p)) for p in sides]
    up = [torch.from_numpy(bicubic_matrix(p, last)) if p != last else torch.eye(last) for p in sides]
    return QuantTables(sides, down, up, [phi_index(k, len(sides)) for k in range(len(sides))])


def resample(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """M @ x @ M.T over the last two axes of x (B, C, H, W)."""
    return m @ x @ m.T


def nearest_code(codebook: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (V, C) for each vector of x (N, C)."""
    dist = x.square().sum(1, keepdim=True) - 2 * x @ codebook.T + codebook.square().sum(1)
    return dist.argmin(dim=1)


def phi(vae: StarVQVAE, index: int, h: torch.Tensor) -> torch.Tensor:
    """Phi_index(h) = (1 - r) h + r conv(h), as in ``StarVQVAE.update``."""
    r = vae.config.quant_resi
    return (1 - r) * h + r * vae.quantize.quant_resi.qresi_ls[index](h)


@dataclass
class Quantized:
    """Straight-through f_hat, per-scale token ids (B, p*p), the VQ loss and the vectors quantized."""

    f_hat: torch.Tensor
    tokens: list[torch.Tensor]
    loss: torch.Tensor
    residuals: torch.Tensor  # (N, Cvae), every scale's downsampled residual, detached
    next_maps: torch.Tensor  # (B, L - 1, Cvae): area(f_hat so far) at each next scale, detached


def quantize(vae: StarVQVAE, f: torch.Tensor, tables: QuantTables, beta: float = 0.25) -> Quantized:
    """VAR's residual quantization over the schedule, with straight-through gradients."""
    codebook = vae.quantize.embedding.weight
    f_target = f.detach()
    rest = f_target.clone()
    f_hat = torch.zeros_like(f)
    tokens, residuals, maps, loss = [], [], [], f.new_zeros(())
    for k, side in enumerate(tables.sides):
        small = resample(tables.down[k], rest).permute(0, 2, 3, 1).reshape(-1, f.shape[1])
        idx = nearest_code(codebook.detach(), small)
        residuals.append(small)
        h = codebook[idx].view(f.shape[0], side, side, -1).permute(0, 3, 1, 2)
        h = phi(vae, tables.phi[k], resample(tables.up[k], h))
        f_hat = f_hat + h
        rest = rest - h.detach()
        loss = loss + beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_target)
        tokens.append(idx.view(f.shape[0], side * side))
        if k + 1 < len(tables.sides):
            maps.append(resample(tables.down[k + 1], f_hat.detach()).flatten(2).transpose(1, 2))
    f_st = f + (f_hat - f).detach()
    return Quantized(f_st, tokens, loss / len(tables.sides), torch.cat(residuals), torch.cat(maps, dim=1))


def restart_dead_codes(vae: StarVQVAE, usage: torch.Tensor, pool: torch.Tensor, generator: torch.Generator) -> int:
    """Move codebook rows unused since the last call onto random residual vectors; return how many."""
    dead = (usage == 0).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    pick = torch.randint(pool.shape[0], (dead.numel(),), generator=generator)
    with torch.no_grad():
        vae.quantize.embedding.weight[dead] = pool[pick]
    return int(dead.numel())
