"""What a transformer block runs per step, counted on CPU: the proxy for its GPU kernel launches and memory traffic.

The counts come from the torch profiler (star_deploy/bench/ops.py); the figures before and
after the fusions are in docs/benchmarks.md. Attention must run the fused SDPA kernel at
every scale, and a bfloat16 block must not copy its (rows, l, C) activations to float32.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from star_deploy.bench.ops import count_block_ops, profiled_ops, step_inputs
from star_deploy.model.transformer import rotary_tables

CPU_SDPA = "aten::_scaled_dot_product_flash_attention_for_cpu"


@pytest.mark.parametrize(("dtype", "most"), [(torch.float32, 29), (torch.bfloat16, 34)])
def test_kernel_ops_per_block(tiny_model, dtype, most):
    """48 (float32) and 63 (bfloat16) kernel ops per block before the fusions."""
    model = tiny_model_as(tiny_model, dtype)
    ops = count_block_ops(model, scale=5)
    assert 0 < ops.count <= most
    assert ops.compute["aten::addmm"] == 6 and ops.compute["aten::native_layer_norm"] == 3


def tiny_model_as(model, dtype: torch.dtype):
    return copy.deepcopy(model).to("cpu", dtype)


@torch.inference_mode()
def test_attention_runs_sdpa_at_every_scale(tiny_model):
    depth = tiny_model.config.transformer.depth
    for scale in range(tiny_model.config.num_scales):
        ops, _ = profiled_ops(tiny_model.transformer.step, *step_inputs(tiny_model, scale))
        assert ops[CPU_SDPA] == 2 * depth, scale
        assert ops["aten::_softmax"] == 0 and ops["aten::bmm"] == 0


class Float32Activations(TorchDispatchMode):
    """Names of the ops whose output is a float32 tensor shaped like the block's activations (rows, l, C)."""

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.shape, self.ops = shape, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == self.shape:
            self.ops.append(str(func))
        return out


@torch.inference_mode()
def test_bfloat16_block_keeps_its_activations_in_bfloat16(tiny_model):
    model = tiny_model_as(tiny_model, torch.bfloat16)
    last = model.config.num_scales - 1
    x, cos, sin, text, past_k, past_v = step_inputs(model, last)
    inputs = (*rotary_tables(cos, sin), text.keys[0], text.values[0], text.bias, past_k[0], past_v[0])
    with Float32Activations(x.shape) as mode:
        out, _, _ = model.transformer.blocks[0](x, *inputs)
    assert out.dtype == torch.bfloat16 and mode.ops == []


def test_fused_tensors_follow_the_parameters(tiny_model):
    """In training the biases and QK scale get gradients; loading changed weights updates the fused tensors."""
    model = tiny_model_as(tiny_model, torch.float32)
    block = model.transformer.blocks[0]
    x, cos, sin, text, past_k, past_v = step_inputs(model, 3)
    inputs = (*rotary_tables(cos, sin), text.keys[0], text.values[0], text.bias, past_k[0], past_v[0])
    block.train()
    block(x, *inputs)[0].square().sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in (block.attn.q_bias, block.attn.v_bias, block.attn.scale_mul_1H11))
    block.eval()
    state = {k: v + 0.5 if k.endswith(("q_bias", "scale_mul_1H11")) else v for k, v in block.state_dict().items()}
    block.load_state_dict(state)
    with torch.inference_mode():
        fused = block(x, *inputs)[0]
    with torch.no_grad():
        fresh = block.train()(x, *inputs)[0]
    assert torch.allclose(fused, fresh, atol=1e-5)
    assert torch.equal(block.attn.qkv_bias[: x.shape[-1]], state["attn.q_bias"])
