"""The torch backend through torch.compile against eager, on the golden model in fp32 (CPU).

The transformer block is compiled once and shared by every block (regional compilation).
Compiling on CPU is slow (a C++ compiler builds every kernel), so the whole generation is
checked with the ``aot_eager`` backend (dynamo's capture of the block, its sharing between
blocks and its specialisations over the scales, counted) and inductor on the first scale
only, with the compile cache folder a second backend starts from. The CUDA path (inductor's
Triton kernels, with and without CUDA graphs) is in tests/test_cuda.py; compile times are
measured by benchmarks/cpu_proxies.py, not here.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import load_golden_model, max_err
from torch._dynamo.utils import counters

from star_deploy.backends.compiled_block import ARTIFACTS, graphs_compiled
from star_deploy.backends.torch_backend import TorchBackend
from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.runtime.pipeline import ScaleLoop


def compiled_pipeline(backend: str, **options) -> ScaleLoop:
    model = load_golden_model()
    return ScaleLoop(TorchBackend(model, compile=backend, **options), PromptTokenizer(model.tokenizer_dir))


@pytest.mark.parametrize(("dynamic", "most_graphs"), [(True, 2), (False, 10)])
def test_compiled_block_gives_the_golden_tokens(golden, golden_cases, golden_sampling, dynamic, most_graphs):
    """One graph serves every block: at most 2 graphs (dynamic lengths) or one per scale, none on a second run."""
    case = golden_cases[0]
    torch._dynamo.reset()
    loop = compiled_pipeline("aot_eager", compile_dynamic=dynamic)
    assert loop.config.num_scales == 10 and loop.config.transformer.depth == 2
    for run in range(2):
        before = graphs_compiled()
        gen = loop.generate([case["prompt"]], golden_sampling, seeds=[case["seed"]])
        assert np.array_equal(gen.tokens, golden[f"{case['key']}/tokens"])
        assert max_err(gen.images, golden[f"{case['key']}/image"]) <= 1e-4
        compiled = graphs_compiled() - before
        assert 1 <= compiled <= most_graphs if run == 0 else compiled == 0
    assert sum(counters["graph_break"].values()) == 0


def first_scale(loop: ScaleLoop, case: dict, sampling):
    return loop.generate(
        [case["prompt"]], sampling, seeds=[case["seed"]], keep_logits=True, on_scale=lambda e: e.scale < 1
    )


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_inductor_block_equals_eager_then_restarts_from_cache(torch_pipeline, golden_cases, golden_sampling, tmp_path):
    """Inductor's block gives the eager tokens; a second backend loading the saved folder compiles no kernel."""
    from torch._inductor.utils import fresh_cache

    case, folder = golden_cases[2], tmp_path / "compiled"
    eager = first_scale(torch_pipeline, case, golden_sampling)
    torch._dynamo.reset()
    with fresh_cache():
        compiled = first_scale(compiled_pipeline("inductor", compile_cache=folder), case, golden_sampling)
    assert np.array_equal(compiled.tokens, eager.tokens) and compiled.tokens.shape == (1, 1 + 4)
    assert max_err(np.concatenate(compiled.logits, 1), np.concatenate(eager.logits, 1)) <= 1e-4
    assert (folder / ARTIFACTS).stat().st_size > 0

    torch._dynamo.reset()
    misses = counters["inductor"]["fxgraph_cache_miss"]
    with fresh_cache():
        loop = compiled_pipeline("inductor", compile_cache=folder)
        assert loop.backend.compile_cache.loaded
        again = first_scale(loop, case, golden_sampling)
    assert counters["inductor"]["fxgraph_cache_miss"] == misses and counters["inductor"]["fxgraph_cache_hit"] > 0
    assert np.array_equal(again.tokens, compiled.tokens)
