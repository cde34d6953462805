"""Teacher-forced training forward of ``StarTransformer``: every scale at once, block-causal mask.

The attention, FFN, embedding and head modules are the inference modules themselves; only
the way the sequence runs differs from ``step``: the whole token sequence goes through in one
call with an empty KV cache, an additive mask lets a token of scale k see scales 1..k, and
every row attends to its own text (no CFG rows in training).
"""

from __future__ import annotations

import torch

from star_deploy.core.config import TransformerConfig
from star_deploy.core.tables import rope_angles
from star_deploy.model.transformer import MASK_VALUE, Block, StarTransformer, TextContext, rotary_tables


def scale_ids(sides: tuple[int, ...]) -> torch.Tensor:
    """Scale index of every token of the sequence, (L,) int64."""
    return torch.cat([torch.full((p * p,), k, dtype=torch.int64) for k, p in enumerate(sides)])


def block_causal_bias(sides: tuple[int, ...]) -> torch.Tensor:
    """Additive attention bias (L, L): 0 where the key's scale <= the query's, MASK_VALUE elsewhere."""
    ids = scale_ids(sides)
    visible = ids[None, :] <= ids[:, None]
    return torch.zeros(visible.shape).masked_fill(~visible, MASK_VALUE)


def sequence_rope(sides: tuple[int, ...], config: TransformerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE cos/sin (L, D/2) of the whole sequence: the per-scale tables concatenated."""
    angles = torch.cat(
        [torch.from_numpy(rope_angles(p, config.head_dim, config.rope_theta, config.rope_norm)) for p in sides]
    )
    return angles.cos(), angles.sin()


class TeacherForcing(torch.nn.Module):
    """Logits (B, L, V) of every scale given the ground-truth next-scale maps."""

    def __init__(self, transformer: StarTransformer, sides: tuple[int, ...]) -> None:
        super().__init__()
        self.transformer = transformer
        cos, sin = rotary_tables(*sequence_rope(sides, transformer.config))
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("bias", block_causal_bias(sides), persistent=False)
        self.register_buffer("levels", scale_ids(sides)[1:], persistent=False)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor, next_maps: torch.Tensor
    ) -> torch.Tensor:
        """hidden (B, Lt, T), mask (B, Lt), pooled (B, T), next_maps (B, L - 1, Cvae) -> logits."""
        t = self.transformer
        start = t.start_tokens(pooled)
        rest = t.embed_next(next_maps, t.lvl_embed(self.levels))
        x = torch.cat((start, rest), dim=1)
        text = t.text_context(hidden, mask)
        empty = t.empty_cache(x.shape[0], x.device)[0]
        for i, blk in enumerate(t.blocks):
            x = self.block(blk, x, text, i, empty)
        return t.logits(x)

    def block(self, blk: Block, x: torch.Tensor, text: TextContext, layer: int, empty: torch.Tensor) -> torch.Tensor:
        """The block's residual structure for the whole sequence, each row attending to its own text."""
        return blk.residual(
            x,
            lambda h: blk.attn(h, self.cos, self.sin, empty, empty, self.bias)[0],
            lambda h: blk.cross_attn(h, text.keys[layer], text.values[layer], text.bias),
        )
