"""The decoder side of VAR's multi-scale VQVAE: codebook, Phi refiners, f_hat update, decoder.

Module names match the official ``vae_ch160v4096z32.pth`` state dict; the encoder,
``quant_conv`` and ``quantize.ema_vocab_hit_SV`` of that file are not used at inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import NUM_PHI, VaeConfig

UNUSED_VAE_PREFIXES = ("encoder.", "quant_conv.", "quantize.ema_vocab_hit_SV")


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


def norm_f32(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm evaluated in float32 (fragile in fp16), returned in x's dtype."""
    w, b = norm.weight.float(), norm.bias.float()
    return F.group_norm(x.float(), norm.num_groups, w, b, norm.eps).to(x.dtype)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(norm_f32(self.norm1, x)))
        h = self.conv2(F.silu(norm_f32(self.norm2, h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, scale C^-1/2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(norm_f32(self.norm, x)).reshape(b, 3, c, h * w).unbind(1)
        scores = torch.matmul(q.transpose(1, 2), k).float() * c**-0.5
        probs = scores.softmax(dim=-1).to(v.dtype)
        out = torch.matmul(v, probs.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Upsample2x(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpLevel(nn.Module):
    def __init__(self, cin: int, cout: int, blocks: int, attn: bool, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout) for i in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(blocks if attn else 0))
        if upsample:
            self.upsample = Upsample2x(cout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return self.upsample(h) if hasattr(self, "upsample") else h


class Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Decoder(nn.Module):
    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        mult, ch, levels = config.ch_mult, config.ch, len(config.ch_mult)
        top = ch * mult[-1]
        self.conv_in = nn.Conv2d(config.cvae, top, 3, 1, 1)
        self.mid = Mid(top)
        ups: list[UpLevel] = []
        cin = top
        for level in reversed(range(levels)):
            cout = ch * mult[level]
            ups.insert(0, UpLevel(cin, cout, config.num_res_blocks + 1, level == levels - 1, level != 0))
            cin = cout
        self.up = nn.ModuleList(ups)
        self.norm_out = group_norm(cin)
        self.conv_out = nn.Conv2d(cin, 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(range(len(self.up))):
            h = self.up[level](h)
        return self.conv_out(F.silu(norm_f32(self.norm_out, h)))


class PhiRefiners(nn.Module):
    """The shared Phi convs, ``quantize.quant_resi.qresi_ls.{0..3}``."""

    def __init__(self, cvae: int) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList(nn.Conv2d(cvae, cvae, 3, 1, 1) for _ in range(NUM_PHI))


class Quantizer(nn.Module):
    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.cvae)
        self.quant_resi = PhiRefiners(config.cvae)


class StarVQVAE(nn.Module):
    """Codebook lookup, f_hat update between scales, and image decoding."""

    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        self.config = config
        self.quantize = Quantizer(config)
        self.post_quant_conv = nn.Conv2d(config.cvae, config.cvae, 3, 1, 1)
        self.decoder = Decoder(config)

    def update(
        self,
        tokens: torch.Tensor,
        f_hat: torch.Tensor,
        upsample: torch.Tensor,
        downsample: torch.Tensor,
        phi_weights: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add a token map (B, p, p) to f_hat (B, Cvae, P, P); return (f_hat, next map (B, l', Cvae)).

        ``upsample`` (P, p) is bicubic (identity on the last scale), ``downsample`` (p', P) is
        area pooling, ``phi_weights`` (4,) one-hot picks the Phi conv: all three are per-scale
        constants (see star_deploy/core/tables.py), so one graph serves every scale.
        """
        h = self.quantize.embedding(tokens).permute(0, 3, 1, 2)
        h = upsample @ h.float() @ upsample.T
        ratio = self.config.quant_resi
        refined = sum(w * conv(h) for w, conv in zip(phi_weights.unbind(0), self.quantize.quant_resi.qresi_ls))
        f_hat = f_hat + ((1 - ratio) * h + ratio * refined)
        nxt = downsample @ f_hat @ downsample.T
        # (B, Cvae, p', p') -> (B, l', Cvae) with l' inferred: flatten would export p' ** 2 as an INT64 Pow,
        # which TensorRT up to 10.11 refuses (ElementWiseOperation kPOW takes floating-point or INT8 inputs).
        return f_hat, nxt.reshape(nxt.shape[0], nxt.shape[1], -1).transpose(1, 2)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1] (B, 3, 16P, 16P) from f_hat (B, Cvae, P, P)."""
        dtype = self.decoder.conv_in.weight.dtype
        z = F.conv2d(
            f_hat.to(dtype), self.post_quant_conv.weight.to(dtype), self.post_quant_conv.bias.to(dtype), padding=1
        )
        img = self.decoder(z).float().clamp(-1, 1)
        return (img + 1) * 0.5
