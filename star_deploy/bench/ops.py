"""Aten ops of one transformer block's step, from the torch profiler: a device-free proxy for kernel launches."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from ..core.tables import build_scale_tables
from ..model.transformer import TextContext
from ..release.weights import StarTorchModel


@dataclass(frozen=True)
class BlockOps:
    """Leaf aten ops one block ran at one scale: those that compute, and views (no kernel)."""

    scale: int
    tokens: int
    compute: Counter
    views: int

    @property
    def count(self) -> int:
        return sum(self.compute.values())


ALLOCATIONS = frozenset({"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::resize_"})


def overloads(name: str) -> list:
    packet = getattr(torch.ops.aten, name.removeprefix("aten::"), None)
    return [] if packet is None else [getattr(packet, o) for o in packet.overloads()]


def is_view(name: str) -> bool:
    """Whether aten op ``name`` only aliases its input (a schema of it returns a read-only alias): no kernel."""
    returns = [r for o in overloads(name) for r in o._schema.returns]
    return any(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def is_composite(name: str) -> bool:
    """Whether aten op ``name`` is only a composition of other aten ops (``linear``, ``layer_norm``, ``to``)."""
    ops = [o for o in overloads(name) if not o._schema.overload_name.endswith("out")]
    key = torch._C.DispatchKey.CompositeImplicitAutograd
    return bool(ops) and all(o.has_kernel_for_dispatch_key(key) for o in ops)


def computes(name: str) -> bool:
    """An aten op with its own kernel: neither a composition, an allocation nor a view."""
    return name.startswith("aten::") and name not in ALLOCATIONS and not is_view(name) and not is_composite(name)


def kernel_ops(prof: profile) -> tuple[list[str], int]:
    """The outermost aten ops with a kernel (one launch each on a GPU), and the number of view ops."""
    kernels, views = [], 0
    for event in prof.events():
        parent = event.cpu_parent
        while parent is not None and not computes(parent.name):
            parent = parent.cpu_parent
        if parent is not None:
            continue
        if computes(event.name):
            kernels.append(event.name)
        elif event.name.startswith("aten::") and is_view(event.name):
            views += 1
    return kernels, views


def step_inputs(model: StarTorchModel, scale: int, rows: int = 2, device: str = "cpu") -> tuple:
    """Random inputs of the transformer step at ``scale`` (the shapes of a batch of ``rows // 2`` prompts)."""
    t, dtype = model.config.transformer, model.transformer.dtype
    patch_nums = model.config.patch_nums
    past = sum(p * p for p in patch_nums[:scale])
    tables = build_scale_tables(model.config)[scale].arrays()
    x = torch.randn(rows, patch_nums[scale] ** 2, t.width, dtype=dtype, device=device)
    cross = [torch.randn(rows // 2, t.heads, 77, t.head_dim, dtype=dtype, device=device) for _ in range(t.depth)]
    text = TextContext(cross, [c.clone() for c in cross], torch.zeros(rows // 2, 1, 1, 77, device=device))
    past_kv = [torch.randn(past, rows, t.heads, t.head_dim, dtype=dtype, device=device) for _ in range(t.depth)]
    cos, sin = (torch.from_numpy(tables[k]).to(device) for k in ("rope_cos", "rope_sin"))
    return x, cos, sin, text, past_kv, [p.clone() for p in past_kv]


def profiled_ops(fn, *args) -> tuple[Counter, int]:
    """Kernel ops (by name) and view ops of ``fn(*args)``, after one warm-up call."""
    fn(*args)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(*args)
    kernels, views = kernel_ops(prof)
    return Counter(kernels), views


@torch.inference_mode()
def count_block_ops(model: StarTorchModel, scale: int) -> BlockOps:
    """Ops per block of one step at ``scale``: the step's, less the logits head's, over the depth."""
    inputs = step_inputs(model, scale)
    step, step_views = profiled_ops(model.transformer.step, *inputs)
    head, head_views = profiled_ops(model.transformer.logits, inputs[0])
    step.subtract(head)
    depth = model.config.transformer.depth
    compute = Counter({n: c // depth for n, c in step.items() if c >= depth})
    return BlockOps(scale, inputs[0].shape[1], compute, (step_views - head_views) // depth)


def cuda_kernels(fn, *args) -> int:
    """CUDA kernels ``fn(*args)`` launches, after one warm-up call."""
    fn(*args)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(*args)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


@torch.inference_mode()
def cuda_kernels_per_block(model: StarTorchModel, scale: int) -> float:
    """CUDA kernels per block of one step at ``scale`` (the step's, less the logits head's, over the depth)."""
    inputs = step_inputs(model, scale, device="cuda")
    step = cuda_kernels(model.transformer.step, *inputs)
    return (step - cuda_kernels(model.transformer.logits, inputs[0])) / model.config.transformer.depth
