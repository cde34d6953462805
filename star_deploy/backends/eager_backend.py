"""The benchmark baseline: the official sampler's execution style on the reference modules.

Eager PyTorch in float32 on CPU (float16 autocast on GPU), the KV cache grown by
concatenation every scale, the text's cross-attention K/V recomputed in every block call,
and cross-attention evaluated on every CFG row before the conditional row's output is
broadcast to both rows of its prompt (reference §5.1). The math is the reference
modules'; only the way they are driven follows the official code.

On GPU one float16 autocast region spans the generation, from the text encoder to the
decoder, as the official sampler's single ``torch.autocast`` block does: autocast then
casts each float32 weight to float16 once per generation (its cast cache lives as long as
the outermost region), not once per scale.
"""

from __future__ import annotations

import contextlib

import torch

from ..core.config import StarConfig
from ..core.fast import ScalePlan, scale_plans
from ..errors import ConfigError
from ..model.graph_modules import DecoderGraph, ScaleUpdateGraph
from ..model.text import TextEncoderModule
from ..model.transformer import MASK_VALUE, Block, StarTransformer, both_cfg_rows, rotary_tables
from ..release.weights import StarTorchModel
from .torch_arrays import TorchArrays, device_tables


class EagerBackend(TorchArrays):
    """Official-style execution: the speed every other backend is compared with."""

    name = "torch-eager"

    def __init__(self, model: StarTorchModel, device: str | torch.device = "cpu") -> None:
        self.config: StarConfig = model.config
        self.device = torch.device(device)
        model.to(self.device, torch.float32)
        self.transformer: StarTransformer = model.transformer
        self.text_graph = TextEncoderModule(model.text_encoder)
        self.update_graph = ScaleUpdateGraph(model.transformer, model.vqvae)
        self.decoder_graph = DecoderGraph(model.vqvae)
        self.tables = device_tables(self.config, self.device)
        self.hidden = self.mask = self.bias = torch.empty(0)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.generation = contextlib.ExitStack()

    def _autocast(self) -> contextlib.AbstractContextManager:
        """float16 autocast on GPU as the official sampler does; plain float32 on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode_text(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Open the generation's autocast region; encode every row and keep them (cross-attention runs on all)."""
        self.generation.close()
        self.generation.enter_context(self._autocast())
        self.mask = self.asarray(attention_mask)
        with self._autocast():
            hidden, pooled = self.text_graph(self.asarray(input_ids), self.mask)
        self.hidden = hidden.float()
        return self.hidden, pooled.float()

    @torch.inference_mode()
    def begin(
        self, hidden: torch.Tensor, attention_mask, pooled: torch.Tensor, plans: tuple[ScalePlan, ...] | None = None
    ) -> torch.Tensor:
        """Start a generation; the baseline runs exact generation only (``plans`` all exact)."""
        if plans is not None and plans != scale_plans(self.config):
            raise ConfigError("the torch-eager baseline generates exactly; run fast modes on another backend")
        rows = pooled.shape[0]
        if self.hidden.shape[0] != rows:
            raise RuntimeError("encode_text() must run on the same rows before begin()")
        self.keys = self.transformer.empty_cache(rows, self.device)
        self.values = self.transformer.empty_cache(rows, self.device)
        self.bias = torch.zeros(self.mask.shape, device=self.device).masked_fill(self.mask == 0, MASK_VALUE)[
            :, None, None, :
        ]
        with self._autocast():
            return self.transformer.start_tokens(pooled.to(self.device))

    def _block(self, blk: Block, layer: int, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The reference block's residual structure, driven the official way (see the module docstring)."""

        def self_attn(h: torch.Tensor) -> torch.Tensor:
            keys, values = self.keys[layer], self.values[layer]
            out, new_k, new_v = blk.attn(h, *rope, keys, values)
            self.keys[layer] = torch.cat((keys, new_k.to(keys.dtype)), dim=0)
            self.values[layer] = torch.cat((values, new_v.to(values.dtype)), dim=0)
            return out

        def cross_attn(h: torch.Tensor) -> torch.Tensor:
            text_k, text_v = blk.cross_attn.text_kv(self.hidden)
            cross = blk.cross_attn(h, text_k.to(h.dtype), text_v.to(h.dtype), self.bias)
            return both_cfg_rows(cross[: h.shape[0] // 2])

        return blk.residual(x, self_attn, cross_attn)

    @torch.inference_mode()
    def step(self, scale: int, x: torch.Tensor) -> torch.Tensor:
        t = self.tables[scale]
        rope = rotary_tables(t["rope_cos"], t["rope_sin"])
        with self._autocast():
            for layer, blk in enumerate(self.transformer.blocks):
                x = self._block(blk, layer, x, rope)
            return self.transformer.logits(x).float()

    @torch.inference_mode()
    def update(self, scale: int, tokens, f_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tables[scale]
        with self._autocast():
            f_hat, nxt = self.update_graph(
                self.asarray(tokens), f_hat, t["upsample"], t["downsample"], t["phi_weights"], t["next_level"]
            )
        return f_hat.float(), nxt.float()

    @torch.inference_mode()
    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """The image; closes the generation's autocast region (and its weight-cast cache)."""
        try:
            return self.preview(f_hat)
        finally:
            self.generation.close()

    @torch.inference_mode()
    def preview(self, f_hat: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.decoder_graph(f_hat.to(self.device)).float()
