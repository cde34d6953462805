"""The benchmark baseline: the official sampler's execution style on the reference modules.

Eager PyTorch in float32 on CPU (float16 autocast on GPU), the KV cache grown by
concatenation every scale, the text's cross-attention K/V recomputed in every block call,
and cross-attention evaluated on every CFG row before the conditional row's output is
broadcast to both rows of its prompt (reference §5.1). The math is the reference
modules'; only the way they are driven follows the official code.
"""

from __future__ import annotations

import contextlib

import torch

from ..config import StarConfig
from ..model.graphs import DecoderGraph, ScaleUpdateGraph
from ..model.tables import ScaleTables
from ..model.text import TextEncoderModule
from ..model.transformer import MASK_VALUE, Block, StarTransformer, layer_norm
from ..weights import StarModel


class EagerBackend:
    """Official-style execution: the speed every other backend is compared with."""

    name = "torch-eager"

    def __init__(self, model: StarModel, device: str | torch.device = "cpu") -> None:
        self.config: StarConfig = model.config
        self.device = torch.device(device)
        model.to(self.device, torch.float32)
        self.transformer: StarTransformer = model.transformer
        self.text_graph = TextEncoderModule(model.text_encoder)
        self.update_graph = ScaleUpdateGraph(model.transformer, model.vqvae)
        self.decoder_graph = DecoderGraph(model.vqvae)
        self.hidden = self.mask = self.bias = torch.empty(0)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def _autocast(self) -> contextlib.AbstractContextManager:
        """float16 autocast on GPU as the official sampler does; plain float32 on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode every row and keep them: cross-attention later runs on all rows."""
        self.mask = attention_mask.to(self.device)
        with self._autocast():
            hidden, pooled = self.text_graph(input_ids.to(self.device), self.mask)
        self.hidden = hidden.float()
        return self.hidden, pooled.float()

    @torch.inference_mode()
    def begin(self, hidden: torch.Tensor, attention_mask: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        rows = pooled.shape[0]
        if self.hidden.shape[0] != rows:
            raise RuntimeError("encode_text() must run on the same rows before begin()")
        self.keys = self.transformer.empty_cache(rows, self.device)
        self.values = self.transformer.empty_cache(rows, self.device)
        self.bias = torch.zeros(self.mask.shape, device=self.device).masked_fill(self.mask == 0, MASK_VALUE)[:, None, None, :]
        with self._autocast():
            return self.transformer.start_tokens(pooled.to(self.device))

    def _block(self, blk: Block, layer: int, x: torch.Tensor, tables: ScaleTables) -> torch.Tensor:
        eps = self.config.transformer.norm_eps
        out, new_k, new_v = blk.attn(layer_norm(x, eps), tables.rope_cos, tables.rope_sin, self.keys[layer], self.values[layer])
        self.keys[layer] = torch.cat((self.keys[layer], new_k.to(self.keys[layer].dtype)), dim=0)
        self.values[layer] = torch.cat((self.values[layer], new_v.to(self.values[layer].dtype)), dim=0)
        x = x + out
        text_k, text_v = blk.cross_attn.text_kv(self.hidden)
        cross = blk.cross_attn(layer_norm(x, eps), text_k.to(x.dtype), text_v.to(x.dtype), self.bias)
        b = x.shape[0] // 2
        x = x + torch.cat((cross[:b], cross[:b]), dim=0)
        return x + blk.ffn(layer_norm(x, eps))

    @torch.inference_mode()
    def step(self, scale: int, x: torch.Tensor, tables: ScaleTables) -> torch.Tensor:
        t = tables.to(self.device)
        with self._autocast():
            for layer, blk in enumerate(self.transformer.blocks):
                x = self._block(blk, layer, x, t)
            return self.transformer.logits(x).float()

    @torch.inference_mode()
    def update(
        self, scale: int, tokens: torch.Tensor, f_hat: torch.Tensor, tables: ScaleTables
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = tables.to(self.device)
        with self._autocast():
            f_hat, nxt = self.update_graph(tokens.to(self.device), f_hat, t.upsample, t.downsample, t.phi_weights, t.next_level)
        return f_hat.float(), nxt.float()

    @torch.inference_mode()
    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.decoder_graph(f_hat.to(self.device)).float()

    preview = decode
