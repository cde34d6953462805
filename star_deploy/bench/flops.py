"""FLOPs of one generation counted from the config: the work any implementation must do.

A multiply-add counts as 2 FLOPs. Counted: every matmul and convolution (projections,
attention over the growing cache, cross-attention of the conditional rows, logits head,
Phi refiner and resampling, VQVAE decoder, CLIP text encoder on the prompts: the
unconditional "" row is the same in every generation and encoded once). Normalizations, softmax
and activations are memory-bound and not counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..core.config import MAX_TEXT_TOKENS, StarConfig
from ..core.fast import ScalePlan


@dataclass(frozen=True)
class StageTotals:
    """A quantity (FLOPs, bytes) of one generation of ``batch`` prompts, by stage (matching StageTimes)."""

    text: float
    steps: list[float]
    update: float
    decode: float

    @property
    def total(self) -> float:
        return self.text + sum(self.steps) + self.update + self.decode

    def to_dict(self) -> dict:
        return asdict(self) | {"total": self.total}


def text_encoder_flops(config: StarConfig, rows: int) -> float:
    """CLIP text tower over 77 tokens for ``rows`` rows."""
    t, n = config.text, MAX_TEXT_TOKENS
    per_layer = n * (4 * t.width**2 + 2 * t.width * t.intermediate) + 2 * n * n * t.width
    return 2.0 * rows * t.layers * per_layer


def text_context_flops(config: StarConfig, batch: int) -> float:
    """Cross-attention K/V of the conditional prompts (once) and the start tokens."""
    t = config.transformer
    kv = batch * MAX_TEXT_TOKENS * t.text_width * 2 * t.width * t.depth
    return 2.0 * (kv + 2 * batch * t.text_width * t.width)


def step_flops(config: StarConfig, batch: int, scale: int) -> float:
    """One scale of the transformer: both CFG rows, cross-attention on the conditional rows."""
    t = config.transformer
    rows, c = 2 * batch, t.width
    l = config.patch_nums[scale] ** 2
    seen = config.scale_offsets()[scale] + l
    self_attn = rows * l * (4 * c * c + 2 * seen * c)
    cross = batch * l * (2 * c * c + 2 * MAX_TEXT_TOKENS * c)
    ffn = rows * l * 2 * c * t.mlp_width
    head = rows * l * c * t.vocab_size
    return 2.0 * (t.depth * (self_attn + cross + ffn) + head)


def planned_step_flops(config: StarConfig, batch: int, plans: tuple[ScalePlan, ...]) -> list[float]:
    """Each scale's step under fast-mode ``plans``: the rows and kept tokens it runs, over the cache they left.

    The head still runs on every token of a pruned scale (restored tokens are sampled too).
    """
    t, c = config.transformer, config.transformer.width
    out, cached = [], 0
    for k, plan in enumerate(plans):
        rows, kept, l = batch * (2 if plan.guided else 1), plan.kept, config.patch_nums[k] ** 2
        self_attn = rows * kept * (4 * c * c + 2 * (cached + kept) * c)
        cross = batch * kept * (2 * c * c + 2 * MAX_TEXT_TOKENS * c)
        ffn = rows * kept * 2 * c * t.mlp_width
        out.append(2.0 * (t.depth * (self_attn + cross + ffn) + rows * l * c * t.vocab_size))
        cached += kept
    return out


def update_flops(config: StarConfig, batch: int, scale: int) -> float:
    """Bicubic upsampling, one Phi conv, area downsampling and the next input's embedding."""
    v, t = config.vae, config.transformer
    side, last = config.patch_nums[scale], config.final_side
    nxt = config.patch_nums[scale + 1] if scale + 1 < config.num_scales else 1
    upsample = v.cvae * (last * last * side + last * side * side) if scale + 1 < config.num_scales else 0
    phi = last * last * v.cvae * v.cvae * 9
    downsample = v.cvae * (nxt * last * last + nxt * nxt * last)
    embed = 2 * nxt * nxt * v.cvae * t.width
    return 2.0 * batch * (upsample + phi + downsample + embed)


def resnet_macs(cin: int, cout: int, res: int) -> int:
    shortcut = cin * cout if cin != cout else 0
    return res * res * (9 * cin * cout + 9 * cout * cout + shortcut)


def attn_macs(channels: int, res: int) -> int:
    n = res * res
    return n * 4 * channels * channels + 2 * n * n * channels


def decoder_flops(config: StarConfig, batch: int) -> float:
    """post_quant_conv and the decoder (mid, up levels, conv_out), per reference §7."""
    v = config.vae
    res, top = config.final_side, v.ch * v.ch_mult[-1]
    macs = res * res * 9 * (v.cvae * v.cvae + v.cvae * top)
    macs += 2 * resnet_macs(top, top, res) + attn_macs(top, res)
    cin = top
    for level in reversed(range(len(v.ch_mult))):
        cout = v.ch * v.ch_mult[level]
        for _ in range(v.num_res_blocks + 1):
            macs += resnet_macs(cin, cout, res)
            cin = cout
            if level == len(v.ch_mult) - 1:
                macs += attn_macs(cout, res)
        if level != 0:
            res *= 2
            macs += res * res * 9 * cout * cout
    macs += res * res * 9 * cin * 3
    return 2.0 * batch * macs


def generation_flops(config: StarConfig, batch: int = 1) -> StageTotals:
    """FLOPs of generating ``batch`` images, split like pipeline.StageTimes."""
    return StageTotals(
        text=text_encoder_flops(config, batch) + text_context_flops(config, batch),
        steps=[step_flops(config, batch, k) for k in range(config.num_scales)],
        update=sum(update_flops(config, batch, k) for k in range(config.num_scales)),
        decode=decoder_flops(config, batch),
    )
