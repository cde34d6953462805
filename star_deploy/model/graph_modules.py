"""The reference as five graphs with flat tensor I/O: what the torch backend runs and ONNX exports.

Each module wraps the reference modules without re-implementing their math; the names and
order of their arguments are those declared in ``star_deploy/core/graphs.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from .transformer import BlockCall, StarTransformer, TextContext, call_block
from .vqvae import StarVQVAE


class TextContextGraph(nn.Module):
    """(cond hidden (B,77,T), cond mask (B,77), pooled (2B,T)) -> start tokens, cross bias, cross K/V."""

    def __init__(self, transformer: StarTransformer) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, text_hidden: torch.Tensor, attention_mask: torch.Tensor, text_pooled: torch.Tensor):
        ctx = self.transformer.text_context(text_hidden, attention_mask)
        start = self.transformer.start_tokens(text_pooled)
        return (start, ctx.bias, *ctx.keys, *ctx.values)


class StepGraph(nn.Module):
    """One scale of the transformer with explicit KV cache.

    Inputs: x, rope_cos, rope_sin, cross_bias, cross_key.* , cross_value.*, past_key.*, past_value.*
    Outputs: logits, new_key.*, new_value.*
    ``call`` runs each block (the torch backend passes a compiled one).
    """

    def __init__(self, transformer: StarTransformer, call: BlockCall | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.depth = transformer.config.depth
        self.call = call or call_block

    def forward(self, x, rope_cos, rope_sin, cross_bias, *layer_tensors):
        d = self.depth
        groups = [list(layer_tensors[i * d : (i + 1) * d]) for i in range(4)]
        text = TextContext(groups[0], groups[1], cross_bias)
        logits, keys, values = self.transformer.step(x, rope_cos, rope_sin, text, groups[2], groups[3], call=self.call)
        return (logits, *keys, *values)


class PrunedStepGraph(nn.Module):
    """One scale of the transformer on the tokens ``kept_index`` names; the others restored (cached token pruning).

    Inputs: x (rows, p, p, C), kept_index (rows, k), rope_cos, rope_sin (p*p, D/2), prior_residual
    (rows, p', p', C), restore (p, p'), cross_bias, cross_key.*, cross_value.*, past_key.*, past_value.*
    Outputs: logits (rows, p*p, V), residual (rows, p, p, C), new_key.*, new_value.* (k, rows, H, D)

    The kept tokens run every block (attending to the cache and to each other); every other
    token's hidden state is its input plus the previous scale's residual, area-resampled to
    this side by ``restore``. Logits come from every token's hidden state; ``residual`` (hidden
    state - input) is what the next pruned scale restores from.
    """

    def __init__(self, transformer: StarTransformer, call: BlockCall | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.depth = transformer.config.depth
        self.call = call or call_block

    def forward(self, x, kept_index, rope_cos, rope_sin, prior_residual, restore, cross_bias, *layer_tensors):
        d = self.depth
        groups = [list(layer_tensors[i * d : (i + 1) * d]) for i in range(4)]
        text = TextContext(groups[0], groups[1], cross_bias)
        rows, side, _, c = x.shape
        # Token maps stay (rows, p, p, C) and are flattened with the length inferred (-1): a length p * p
        # spelled out would export as an INT64 Pow, which TensorRT up to 10.11 refuses (as in StarVQVAE.update).
        slots = kept_index[..., None].expand(-1, -1, c)
        kept = x.reshape(rows, -1, c).gather(1, slots)
        hidden, keys, values = self.transformer.run_blocks(
            kept, rope_cos[kept_index], rope_sin[kept_index], text, groups[2], groups[3], call=self.call
        )
        restored = x + resample(prior_residual, restore.to(x.dtype))
        out = restored.reshape(rows, -1, c).scatter(1, slots, hidden).reshape(rows, side, side, c)
        logits = self.transformer.logits(out)
        return (logits.reshape(rows, -1, logits.shape[-1]), out - x, *keys, *values)


def resample(maps: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Token maps (N, p', p', C) resampled to (N, p, p, C) by ``matrix`` (p, p') along both axes."""
    channels_first = maps.permute(0, 3, 1, 2)
    return (matrix @ channels_first @ matrix.transpose(0, 1)).permute(0, 2, 3, 1)


class ScaleUpdateGraph(nn.Module):
    """(tokens, f_hat, upsample, downsample, phi_weights, next_level) -> (f_hat, next x (2B, l', C))."""

    def __init__(self, transformer: StarTransformer, vqvae: StarVQVAE) -> None:
        super().__init__()
        self.transformer = transformer
        self.vqvae = vqvae

    def forward(self, tokens, f_hat, upsample, downsample, phi_weights, next_level):
        f_hat, next_map = self.vqvae.update(tokens, f_hat, upsample, downsample, phi_weights)
        lvl = self.transformer.lvl_embed(next_level)
        x = self.transformer.embed_next(next_map, lvl)
        return f_hat, torch.cat((x, x), dim=0)


class DecoderGraph(nn.Module):
    """f_hat (B, Cvae, P, P) -> image (B, 3, 16P, 16P) in [0, 1]."""

    def __init__(self, vqvae: StarVQVAE) -> None:
        super().__init__()
        self.vqvae = vqvae

    def forward(self, f_hat):
        return self.vqvae.decode(f_hat)
