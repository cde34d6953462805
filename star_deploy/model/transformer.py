"""The STAR transformer with an explicit per-scale ``step`` (KV cache in, new K/V out).

State-dict names match the official checkpoint (``["trainer"]["var_wo_ddp"]``).
KV layout everywhere: (sequence, rows, heads, head_dim), sequence-major, so that the
cache prefix a step reads and the slot it writes are contiguous views of one buffer.
Compute dtype follows the weights; LayerNorm statistics, the QK L2-norm, softmax, RoPE
and the logits head always run in float32 (LayerNorm of float16/bfloat16 activations
accumulates in float32 inside its kernel, so its input is not cast: no float32 copy of the
large activations).

A block runs few kernels per step: one QKV GEMM with its bias fused at load time, RoPE and
the L2-norm applied to q and k together with the per-head scale folded into one multiply,
SDPA for attention, and the conditional rows' cross-attention added to both CFG rows by
broadcasting. A block takes only tensors, so one compiled block serves every layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import TransformerConfig

Sublayer = Callable[[torch.Tensor], torch.Tensor]
"""An attention sublayer as a block drives it: LayerNormed x -> its output, added to x."""
MAX_SCALE_MUL = math.log(100.0)
MASK_VALUE = -30000.0
"""Additive bias on padded text tokens: exp() underflows to 0 in fp32, representable in fp16."""


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Affine-free LayerNorm with float32 statistics, returned in x's dtype.

    The kernel accumulates in float32 for every dtype; export keeps the explicit cast so the
    ONNX graph's normalization stays float32 whatever its runtime does with float16.
    """
    if x.dtype == torch.float32 or not torch.compiler.is_exporting():
        return F.layer_norm(x, x.shape[-1:], eps=eps)
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-width RoPE factors (l, 1, 1, D) from the per-pair tables (l, D/2): once per step, for every block.

    Tables gathered per row, (N, l, D/2), give (N, l, 1, 1, D). With them the rotation of pairs
    (2m, 2m+1) is ``x * cos + swap_pairs(x) * sin``.
    """
    full_cos = cos.repeat_interleave(2, dim=-1)
    signed_sin = torch.stack((-sin, sin), dim=-1).flatten(-2)
    return full_cos[..., None, None, :], signed_sin[..., None, None, :]


def swap_pairs(x: torch.Tensor) -> torch.Tensor:
    """Channels (2m, 2m+1) -> (2m+1, 2m)."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x (N, l, ..., D) in float32 by the full-width factors of ``rotary_tables``.

    Equal bit for bit to ``(x0 cos - x1 sin, x0 sin + x1 cos)`` per pair.
    """
    x = x.float()
    return x * cos + swap_pairs(x) * sin


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Softmax(q k^T + bias) v with scale 1, softmax in float32; q,k,v as (N, H, L, D).

    Eager PyTorch and torch.compile run the fused kernel (it accumulates the softmax in
    float32 for every dtype); export keeps the explicit form so the graph's softmax stays float32.
    """
    if not torch.compiler.is_exporting():
        mask = None if bias is None else bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    scores = torch.matmul(q, k.transpose(-1, -2)).float()
    if bias is not None:
        scores = scores + bias
    probs = scores.softmax(dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


class NormedAttention(nn.Module):
    """Parameters shared by STAR's self- and cross-attention: biases, QK-norm scale, output projection.

    ``q_scale`` (H, 1) float32, ``exp(min(scale_mul, log 100))``, is derived from the
    parameters (not saved) and refreshed whenever they load or move; while they may change
    (training, autograd on) it is computed afresh from them at every call instead.
    """

    DERIVED: tuple[str, ...] = ("q_scale",)

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.proj = nn.Linear(width, width)
        self.register_buffer("q_scale", torch.empty(0), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _: module.fuse())

    @torch.no_grad()
    def fuse(self) -> None:
        """Recompute the derived tensors from the parameters (after loading or moving them)."""
        for name in self.DERIVED:
            setattr(self, name, getattr(self, f"_{name}")())

    def derived(self, name: str) -> torch.Tensor:
        """The derived tensor ``name``: the fused one, or computed now while the parameters may change."""
        if self.training or torch.is_grad_enabled():
            return getattr(self, f"_{name}")()
        return getattr(self, name)

    def _q_scale(self) -> torch.Tensor:
        return self.scale_mul_1H11.float().clamp_max(MAX_SCALE_MUL).exp().view(self.heads, 1)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.fuse()
        return self


class SelfAttention(NormedAttention):
    """``qkv_bias`` (3C,) is the fused (q_bias, 0, v_bias), ``qk_scale`` (2, H, 1) the scales of q and k (1)."""

    DERIVED = ("q_scale", "qk_scale", "qkv_bias")

    def __init__(self, width: int, heads: int) -> None:
        super().__init__(width, heads)
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.register_buffer("qk_scale", torch.empty(0), persistent=False)
        self.register_buffer("qkv_bias", torch.empty(0), persistent=False)
        self.fuse()

    def _qk_scale(self) -> torch.Tensor:
        q_scale = self._q_scale()
        return torch.stack((q_scale, torch.ones_like(q_scale)))

    def _qkv_bias(self) -> torch.Tensor:
        return torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """Projections of x (N, l, C) as one (N, l, 3, H, D) tensor."""
        n, l, c = x.shape
        return F.linear(x, self.mat_qkv.weight, self.derived("qkv_bias")).view(n, l, 3, self.heads, c // self.heads)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend over past + this scale; returns (output, new_k, new_v) in cache layout.

        ``cos``/``sin`` are the full-width factors of ``rotary_tables``.
        """
        qkv = self.qkv(x)
        qk = (l2_normalize(apply_rope(qkv[:, :, :2], cos, sin)) * self.derived("qk_scale")).to(x.dtype)
        q, new_k, new_v = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(0, 1), qkv[:, :, 2].transpose(0, 1)
        keys = torch.cat((past_k, new_k), dim=0).permute(1, 2, 0, 3)
        values = torch.cat((past_v, new_v), dim=0).permute(1, 2, 0, 3)
        out = attention(q, keys, values, mask)
        out = out.transpose(1, 2).reshape(x.shape)
        return self.proj(out), new_k, new_v


class CrossAttention(NormedAttention):
    def __init__(self, width: int, text_width: int, heads: int) -> None:
        super().__init__(width, heads)
        self.mat_q = nn.Linear(width, width, bias=False)
        self.mat_kv = nn.Linear(text_width, 2 * width, bias=False)
        self.fuse()

    def text_kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized keys and values of the text (B, Lt, T) as (B, H, Lt, D); once per prompt."""
        b, lt, _ = text.shape
        bias = torch.cat((self.zero_k_bias, self.v_bias)).to(text.dtype)
        kv = F.linear(text, self.mat_kv.weight, bias).view(b, lt, 2, self.heads, -1)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return l2_normalize(k).to(text.dtype), v

    def forward(
        self, x: torch.Tensor, text_k: torch.Tensor, text_v: torch.Tensor, text_bias: torch.Tensor
    ) -> torch.Tensor:
        b, l, c = x.shape
        q = F.linear(x, self.mat_q.weight, self.q_bias.to(x.dtype)).view(b, l, self.heads, -1)
        q = (l2_normalize(q) * self.derived("q_scale")).to(x.dtype).transpose(1, 2)
        out = attention(q, text_k, text_v, text_bias)
        return self.proj(out.transpose(1, 2).reshape(b, l, c))


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.eps = config.norm_eps
        self.attn = SelfAttention(config.width, config.heads)
        self.cross_attn = CrossAttention(config.width, config.text_width, config.heads)
        self.ffn = FeedForward(config.width, config.mlp_width)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text_k: torch.Tensor,
        text_v: torch.Tensor,
        text_bias: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One block over the cache prefix ``past_k``/``past_v``: (x, new_k, new_v) in cache layout.

        ``cos``/``sin`` come from ``rotary_tables``; ``text_*`` are this layer's cross K/V
        and the text bias of the conditional rows (see ``TextContext``).
        """
        new: list[torch.Tensor] = []
        text = (text_k, text_v, text_bias)

        def self_attn(h: torch.Tensor) -> torch.Tensor:
            out, new_k, new_v = self.attn(h, cos, sin, past_k, past_v, mask)
            new.extend((new_k, new_v))
            return out

        x = self.residual(x, self_attn, lambda h: self.cross_attn(conditional_rows(h, text_k.shape[0]), *text))
        return x, new[0], new[1]

    def residual(self, x: torch.Tensor, self_attn: Sublayer, cross_attn: Sublayer) -> torch.Tensor:
        """The block's residual structure: x + self-attention, + cross-attention, + FFN, each on LayerNormed x.

        A cross-attention output of the conditional rows only is added to both CFG rows (``add_to_rows``).
        """
        x = x + self_attn(layer_norm(x, self.eps))
        x = add_to_rows(x, cross_attn(layer_norm(x, self.eps)))
        return x + self.ffn(layer_norm(x, self.eps))


def conditional_rows(h: torch.Tensor, batch: int) -> torch.Tensor:
    """The first ``batch`` rows of h: all of them where only the conditional rows run (fast modes).

    Exported graphs gather them, so one graph serves rows = 2B and rows = B.
    """
    if torch.compiler.is_exporting():
        return h.index_select(0, torch.arange(batch, device=h.device))
    return h[:batch]


def add_to_rows(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """x + out; an ``out`` of the B conditional rows of x's 2B rows [cond; uncond] goes to both rows of its prompt.

    The official block broadcasts the conditional row's cross-attention to the
    unconditional row (reference §5.1); broadcasting the add does it without a copy. Where
    x holds the conditional rows alone, ``out`` adds row for row. Exported graphs gather
    row ``r % B`` of ``out`` instead, which serves both cases with one graph.
    """
    if torch.compiler.is_exporting():
        batch = torch.full((), out.shape[0], dtype=torch.int64, device=x.device)
        return x + out.index_select(0, torch.arange(x.shape[0], device=x.device).remainder(batch))
    if out.shape[0] == x.shape[0]:
        return x + out
    return (x.unflatten(0, (2, -1)) + out).flatten(0, 1)


def both_cfg_rows(cond: torch.Tensor) -> torch.Tensor:
    """The conditional rows' output (B, ...) for all CFG rows [cond; uncond] (2B, ...)."""
    return torch.cat((cond, cond), dim=0)


BlockCall = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""How ``StarTransformer.step`` runs a block: ``call(block, *block inputs)`` (a compiled function, say)."""


def call_block(block: Block, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return block(*args)


@dataclass
class TextContext:
    """Per-prompt text state shared by every scale: cross K/V per layer and the mask bias."""

    keys: list[torch.Tensor]  # each (B, H, Lt, D)
    values: list[torch.Tensor]  # each (B, H, Lt, D)
    bias: torch.Tensor  # (B, 1, 1, Lt) float32, MASK_VALUE on padding


class StarTransformer(nn.Module):
    """STAR's transformer. ``step`` runs one scale; ``text_context``/``start_tokens`` run once."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        c = config.width
        self.pos_start = nn.Parameter(torch.zeros(1, 1, c))
        self.word_embed = nn.Linear(config.cvae, c)
        self.class_emb = nn.Embedding(1001, c)
        self.lvl_embed = nn.Embedding(config.num_scales, c)
        self.encoder_proj = nn.Linear(config.text_width, c)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.head_logits = nn.Linear(c, config.vocab_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.word_embed.weight.dtype

    def text_context(self, hidden: torch.Tensor, mask: torch.Tensor) -> TextContext:
        """Cross-attention K/V of the conditional prompts' hidden states (B, Lt, T)."""
        hidden = hidden.to(self.dtype)
        kv = [blk.cross_attn.text_kv(hidden) for blk in self.blocks]
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        bias = bias.masked_fill(mask == 0, MASK_VALUE)[:, None, None, :]
        return TextContext([k for k, _ in kv], [v for _, v in kv], bias)

    def start_tokens(self, pooled: torch.Tensor) -> torch.Tensor:
        """Scale-0 input (2B, 1, C) from the pooled text of rows [cond; uncond]."""
        sos = self.encoder_proj(pooled.to(self.dtype))[:, None, :]
        return sos + self.pos_start + self.lvl_embed.weight[0]

    def embed_next(self, next_map: torch.Tensor, lvl: torch.Tensor) -> torch.Tensor:
        """Next-scale input (B, l, C) from the area-downsampled f_hat (B, l, Cvae)."""
        return self.word_embed(next_map.to(self.dtype)) + lvl.to(self.dtype)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits in float32 from a float32 LayerNorm and head."""
        h = F.layer_norm(x.float(), x.shape[-1:], eps=self.config.norm_eps)
        return F.linear(h, self.head_logits.weight.float(), self.head_logits.bias.float())

    def step(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text: TextContext,
        past_keys: list[torch.Tensor],
        past_values: list[torch.Tensor],
        mask: torch.Tensor | None = None,
        call: BlockCall = call_block,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """One scale: x (2B, l, C) over cached (S, 2B, H, D) -> logits (2B, l, V), new K/V.

        ``cos``/``sin`` are the scale's per-pair RoPE tables (l, D/2). The rows may be the B
        conditional rows alone, over a cache of B rows.
        """
        x, new_keys, new_values = self.run_blocks(x, cos, sin, text, past_keys, past_values, mask, call)
        return self.logits(x), new_keys, new_values

    def run_blocks(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text: TextContext,
        past_keys: list[torch.Tensor],
        past_values: list[torch.Tensor],
        mask: torch.Tensor | None = None,
        call: BlockCall = call_block,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Every block over x: the hidden states before the head, and the new K/V of each layer.

        ``cos``/``sin`` are (l, D/2), or (N, l, D/2) for tokens gathered per row.
        """
        cos, sin = rotary_tables(cos, sin)
        new_keys, new_values = [], []
        for i, blk in enumerate(self.blocks):
            args = (cos, sin, text.keys[i], text.values[i], text.bias, past_keys[i], past_values[i], mask)
            x, k, v = call(blk, x, *args)
            new_keys.append(k)
            new_values.append(v)
        return x, new_keys, new_values

    def empty_cache(self, rows: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """A zero-length cache tensor for one layer's keys or values."""
        t = self.config
        return [torch.zeros(0, rows, t.heads, t.head_dim, dtype=self.dtype, device=device) for _ in range(t.depth)]
