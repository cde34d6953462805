"""The public contract of the exported graphs: names, symbolic shapes and dtypes of every I/O.

One declaration serves export (input/output names, dynamic axes), the manifest, the
ONNX Runtime and TensorRT backends (bindings, buffers, profiles) and the tests.

Symbolic dimensions:
  batch        B, prompts per call
  rows         2B, CFG rows [cond_0..cond_{B-1}, uncond_0..uncond_{B-1}]; B (the conditional rows
               alone) where guidance stops early (fast modes, ``core/fast.py``)
  tokens       l = p*p, tokens of the current scale
  past         tokens in the KV cache: every token of the earlier scales (0 at the first scale), or
               the tokens they kept where scales were pruned
  side         p, side of the current scale's token map
  next_tokens  l' = p'*p', tokens of the next scale (1 after the last scale)
  next_side    p'
  kept         tokens a pruned scale runs through the transformer (fast modes)
  prior_side   side of the previous scale (1 at the first scale)

Graphs (file ``<name>.onnx``):
  text_encoder      input_ids, attention_mask -> text_hidden, text_pooled
  text_context      text_hidden, attention_mask (cond rows), text_pooled (all rows)
                    -> start_tokens, cross_bias, cross_key.{i}, cross_value.{i}
  transformer_step  x, rope_cos, rope_sin, cross_bias, cross_key.{i}, cross_value.{i},
                    past_key.{i}, past_value.{i} -> logits, new_key.{i}, new_value.{i}
  scale_update      tokens, f_hat, upsample, downsample, phi_weights, next_level -> f_hat_out, next_x
  vq_decoder        f_hat -> image
  transformer_step_pruned (optional: exports from the version with fast modes on)
                    x, kept_index, rope_cos, rope_sin, prior_residual, restore, cross_bias,
                    cross_key.{i}, cross_value.{i}, past_key.{i}, past_value.{i}
                    -> logits, residual, new_key.{i}, new_value.{i}
                    The step on the ``kept`` tokens ``kept_index`` names (per row, ascending); every
                    other token's output is its input plus ``prior_residual`` resampled to this
                    scale by ``restore`` (area), and ``residual`` is what the stack added to every
                    token, for the next pruned scale. With every token kept it is the plain step
                    that also returns its residual. x and the residuals are token maps (rows, side,
                    side, C); the new keys and values are the kept tokens'.

Each tensor carries its Role (caller input, output, text context, cache prefix, cache slot):
runtimes bind memory by role, never by parsing names. Per-scale graphs (transformer_step,
scale_update) run once per scale and get one engine profile per scale.

KV tensors are sequence-major, (sequence, rows, heads, head_dim), so the cache prefix a
step reads and the slot it writes are contiguous views of one preallocated buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .config import MAX_TEXT_TOKENS, NUM_PHI, StarConfig
from .fast import ScalePlan, past_lengths, scale_plans

Dim = str | int
EXPORT_PRECISIONS = ("fp32", "fp16")
QUANTIZED_PRECISIONS = ("int8", "int4", "int8-dynamic")
"""Quantized copies of an fp32 export (``star-deploy quantize``), fp32 I/O: weight-only int8/int4 (MatMulNBits),
or int8 weights and activations quantized at run time (MatMulInteger)."""
PRECISIONS = EXPORT_PRECISIONS + QUANTIZED_PRECISIONS
ACCURACY_LEVEL = 4
"""MatMulNBits compute type of quantized graphs by default: 4 = int8 activations (fast), 1 = float32."""
GRAPH_NAMES = ("text_encoder", "text_context", "transformer_step", "scale_update", "vq_decoder")
"""The graphs every artefact folder holds."""
PRUNED_STEP = "transformer_step_pruned"
OPTIONAL_GRAPHS = (PRUNED_STEP,)
"""Graphs an export of this version adds; a folder without them runs exact generation only."""


class Role(str, Enum):
    """What a tensor is to the runtime, and so where the memory bound to it comes from."""

    CALLER = "caller"  # an input the pipeline passes in (ids, x, tokens, f_hat, tables)
    OUTPUT = "output"  # a fresh output of this call
    TEXT_CONTEXT = "text"  # text_context output kept for the whole schedule, read by every step
    CACHE_PREFIX = "past"  # KV-cache view read by a step: rows [0, past)
    CACHE_SLOT = "slot"  # KV-cache view written in place by a step: rows [past, past + tokens)


CACHE_ROLES = (Role.CACHE_PREFIX, Role.CACHE_SLOT)


@dataclass(frozen=True)
class TensorSpec:
    """One graph I/O: name, symbolic shape, dtype, role; cache tensors also name their layer and K or V."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str
    role: Role = Role.CALLER
    layer: int | None = None
    is_value: bool = False

    def concrete(self, dims: dict[str, int]) -> tuple[int, ...]:
        """The shape with symbolic dimensions replaced from ``dims``."""
        return tuple(d if isinstance(d, int) else dims[d] for d in self.shape)

    def to_dict(self) -> dict:
        """The manifest entry: name, shape and dtype (roles follow from the names and are not stored)."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class GraphSpec:
    """One graph's I/O; ``per_scale`` graphs are run (and get engine profiles) once per scale."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    per_scale: bool = False

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def with_role(self, role: Role) -> list[TensorSpec]:
        """Every tensor of ``role``, inputs then outputs, in spec order."""
        return [t for t in self.inputs + self.outputs if t.role is role]

    def tensor(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name!r}")

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


def activation_dtype(precision: str) -> str:
    """dtype of an export's activations, K/V and embeddings (fp32 islands and I/O of other tensors stay float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return "float16" if precision == "fp16" else "float32"


def graph_specs(config: StarConfig, precision: str = "fp32") -> dict[str, GraphSpec]:
    """Every graph's I/O for ``config``; fp16 applies to activations, K/V and embeddings."""
    t, v = config.transformer, config.vae
    act, f32, i64 = activation_dtype(precision), "float32", "int64"
    n, c, h, d, p = MAX_TEXT_TOKENS, t.width, t.heads, t.head_dim, config.final_side
    half = d // 2
    out, text = Role.OUTPUT, Role.TEXT_CONTEXT

    def per_layer(prefix: str, shape: tuple[Dim, ...], role: Role) -> tuple[TensorSpec, ...]:
        value = prefix.endswith("value")
        return tuple(
            TensorSpec(f"{prefix}.{i}", shape, act, role, i if role in CACHE_ROLES else None, value)
            for i in range(t.depth)
        )

    cross_shape: tuple[Dim, ...] = ("batch", h, n, d)
    specs = [
        GraphSpec(
            "text_encoder",
            (TensorSpec("input_ids", ("rows", n), i64), TensorSpec("attention_mask", ("rows", n), i64)),
            (
                TensorSpec("text_hidden", ("rows", n, t.text_width), f32, out),
                TensorSpec("text_pooled", ("rows", t.text_width), f32, out),
            ),
        ),
        GraphSpec(
            "text_context",
            (
                TensorSpec("text_hidden", ("batch", n, t.text_width), f32),
                TensorSpec("attention_mask", ("batch", n), i64),
                TensorSpec("text_pooled", ("rows", t.text_width), f32),
            ),
            (
                TensorSpec("start_tokens", ("rows", 1, c), act, out),
                TensorSpec("cross_bias", ("batch", 1, 1, n), f32, text),
                *per_layer("cross_key", cross_shape, text),
                *per_layer("cross_value", cross_shape, text),
            ),
        ),
        GraphSpec(
            "transformer_step",
            (
                TensorSpec("x", ("rows", "tokens", c), act),
                TensorSpec("rope_cos", ("tokens", half), f32),
                TensorSpec("rope_sin", ("tokens", half), f32),
                TensorSpec("cross_bias", ("batch", 1, 1, n), f32, text),
                *per_layer("cross_key", cross_shape, text),
                *per_layer("cross_value", cross_shape, text),
                *per_layer("past_key", ("past", "rows", h, d), Role.CACHE_PREFIX),
                *per_layer("past_value", ("past", "rows", h, d), Role.CACHE_PREFIX),
            ),
            (
                TensorSpec("logits", ("rows", "tokens", t.vocab_size), f32, out),
                *per_layer("new_key", ("tokens", "rows", h, d), Role.CACHE_SLOT),
                *per_layer("new_value", ("tokens", "rows", h, d), Role.CACHE_SLOT),
            ),
            per_scale=True,
        ),
        GraphSpec(
            PRUNED_STEP,
            (
                TensorSpec("x", ("rows", "side", "side", c), act),
                TensorSpec("kept_index", ("rows", "kept"), i64),
                TensorSpec("rope_cos", ("tokens", half), f32),
                TensorSpec("rope_sin", ("tokens", half), f32),
                TensorSpec("prior_residual", ("rows", "prior_side", "prior_side", c), act),
                TensorSpec("restore", ("side", "prior_side"), f32),
                TensorSpec("cross_bias", ("batch", 1, 1, n), f32, text),
                *per_layer("cross_key", cross_shape, text),
                *per_layer("cross_value", cross_shape, text),
                *per_layer("past_key", ("past", "rows", h, d), Role.CACHE_PREFIX),
                *per_layer("past_value", ("past", "rows", h, d), Role.CACHE_PREFIX),
            ),
            (
                TensorSpec("logits", ("rows", "tokens", t.vocab_size), f32, out),
                TensorSpec("residual", ("rows", "side", "side", c), act, out),
                *per_layer("new_key", ("kept", "rows", h, d), Role.CACHE_SLOT),
                *per_layer("new_value", ("kept", "rows", h, d), Role.CACHE_SLOT),
            ),
            per_scale=True,
        ),
        GraphSpec(
            "scale_update",
            (
                TensorSpec("tokens", ("batch", "side", "side"), i64),
                TensorSpec("f_hat", ("batch", v.cvae, p, p), f32),
                TensorSpec("upsample", (p, "side"), f32),
                TensorSpec("downsample", ("next_side", p), f32),
                TensorSpec("phi_weights", (NUM_PHI,), f32),
                TensorSpec("next_level", (1,), i64),
            ),
            (
                TensorSpec("f_hat_out", ("batch", v.cvae, p, p), f32, out),
                TensorSpec("next_x", ("rows", "next_tokens", c), act, out),
            ),
            per_scale=True,
        ),
        GraphSpec(
            "vq_decoder",
            (TensorSpec("f_hat", ("batch", v.cvae, p, p), f32),),
            (TensorSpec("image", ("batch", 3, config.image_size, config.image_size), f32, out),),
        ),
    ]
    return {s.name: s for s in specs}


def scale_dims(
    config: StarConfig, batch: int, scale: int, plans: tuple[ScalePlan, ...] | None = None
) -> dict[str, int]:
    """Values of every symbolic dimension at ``scale`` for ``batch`` prompts, exact or under ``plans``.

    ``rows`` and ``past`` are the step's; the scale update always returns both CFG rows.
    """
    sides = config.patch_nums
    side = sides[scale]
    next_side = sides[scale + 1] if scale + 1 < len(sides) else 1
    plans = plans or scale_plans(config)
    plan = plans[scale]
    return {
        "batch": batch,
        "rows": batch * (2 if plan.guided else 1),
        "tokens": side * side,
        "past": past_lengths(config, plans)[scale],
        "side": side,
        "next_tokens": next_side * next_side,
        "next_side": next_side,
        "kept": plan.kept,
        "prior_side": sides[scale - 1] if scale else 1,
    }


def step_graph(plan: ScalePlan) -> str:
    """The step graph a scale of ``plan`` runs."""
    return PRUNED_STEP if plan.residual else "transformer_step"
