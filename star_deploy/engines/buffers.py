"""Device-buffer plans of the TensorRT runtime: byte sizes and where each binding's memory comes from.

Every I/O tensor of an engine is bound to a torch CUDA tensor. The plan says, per manifest
name, which buffer backs it (a fresh output, the text context computed once per prompt, a
view of the preallocated KV cache) and how many bytes the largest profile needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import StarConfig
from ..core.dtypes import tensor_bytes
from ..core.graphs import CACHE_ROLES, OPTIONAL_GRAPHS, GraphSpec, Role, activation_dtype
from ..errors import ArtifactError
from .profiles import profile_dims, profile_table


@dataclass(frozen=True)
class Binding:
    """One engine I/O tensor: its manifest name, direction, role (memory source) and cache layer."""

    name: str
    is_input: bool
    role: Role
    dtype: str
    layer: int | None = None
    is_value: bool = False


def binding_plan(spec: GraphSpec) -> list[Binding]:
    """Every tensor of ``spec`` with the role its spec declares, inputs then outputs in spec order."""
    return [
        Binding(t.name, is_input, t.role, t.dtype, t.layer, t.is_value)
        for is_input, tensors in ((True, spec.inputs), (False, spec.outputs))
        for t in tensors
    ]


def bound_tensor(binding: Binding, cache, text: dict, tokens: int):
    """The KV-cache view (``cache`` a backends.kv_cache.KVCache) or text-context tensor behind ``binding``."""
    if binding.role is Role.TEXT_CONTEXT:
        return text[binding.name]
    if binding.role not in CACHE_ROLES:
        raise ValueError(f"{binding.name} is bound by the caller, not by the runtime")
    layers = cache.values if binding.is_value else cache.keys
    if binding.role is Role.CACHE_PREFIX:
        return layers[binding.layer][: cache.length]
    return layers[binding.layer][cache.length : cache.length + tokens]


def check_engine_names(spec: GraphSpec, engine_inputs: list[str], engine_outputs: list[str]) -> None:
    """Refuse an engine whose I/O tensor names differ from the manifest contract."""
    want_in, want_out = set(spec.input_names), set(spec.output_names)
    got_in, got_out = set(engine_inputs), set(engine_outputs)
    if got_in == want_in and got_out == want_out:
        return
    missing = sorted((want_in - got_in) | (want_out - got_out))
    extra = sorted((got_in - want_in) | (got_out - want_out))
    raise ArtifactError(
        f"the {spec.name} engine does not match the manifest (missing {missing or 'none'}, "
        f"unexpected {extra or 'none'}); "
        "rebuild with `star-deploy build-engine DIR --overwrite`"
    )


def kv_cache_bytes(config: StarConfig, batch: int, precision: str = "fp16") -> int:
    """Keys and values of every layer for the whole schedule: depth x 2 x (L, 2B, H, D)."""
    t = config.transformer
    shape = (config.total_tokens, 2 * batch, t.heads, t.head_dim)
    return 2 * t.depth * tensor_bytes(shape, activation_dtype(precision))


def graph_peak_bytes(config: StarConfig, spec: GraphSpec, batch: int) -> dict[str, int]:
    """Largest byte size of each I/O tensor of ``spec`` over its profiles at ``batch``."""
    peak: dict[str, int] = {}
    for profile in profile_table(config, spec, [batch]):
        dims = profile_dims(config, batch, profile.scale)
        for t in spec.inputs + spec.outputs:
            peak[t.name] = max(peak.get(t.name, 0), tensor_bytes(t.concrete(dims), t.dtype))
    return peak


@dataclass(frozen=True)
class BufferPlan:
    """Device memory the runtime holds at ``batch``: KV cache, text context, largest transient I/O."""

    batch: int
    kv_cache: int
    text_context: int
    transient_peak: int

    @property
    def total(self) -> int:
        return self.kv_cache + self.text_context + self.transient_peak


def buffer_plan(config: StarConfig, specs: dict[str, GraphSpec], batch: int, precision: str) -> BufferPlan:
    """Byte sizes of every buffer class of the engines built (optional graphs have none; activations not included)."""
    context = specs["text_context"]
    peak = graph_peak_bytes(config, context, batch)
    text = sum(peak[t.name] for t in context.with_role(Role.TEXT_CONTEXT))
    transient = 0
    for spec in (s for name, s in specs.items() if name not in OPTIONAL_GRAPHS):
        peak = graph_peak_bytes(config, spec, batch)
        owned = spec.with_role(Role.CALLER) + spec.with_role(Role.OUTPUT)
        transient = max(transient, sum(peak[t.name] for t in owned))
    return BufferPlan(batch, kv_cache_bytes(config, batch, precision), text, transient)
