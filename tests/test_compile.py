"""The torch backend through torch.compile against eager, on the golden model in fp32 (CPU).

Compiling on CPU is slow (a C++ compiler builds every kernel), so the whole generation is
checked with the ``aot_eager`` backend (dynamo's capture of the step, its in-place cache
writes and its per-scale specialisation) and inductor on the first scale only. The CUDA
path (inductor's Triton kernels, with and without CUDA graphs) is in tests/test_cuda.py.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import load_golden_model, max_err

from star_deploy.backends.torch_backend import TorchBackend
from star_deploy.pipeline import ScaleLoop
from star_deploy.tokenizer import PromptTokenizer


def compiled_pipeline(backend: str) -> ScaleLoop:
    model = load_golden_model()
    return ScaleLoop(TorchBackend(model, compile=backend), PromptTokenizer(model.tokenizer_dir))


def test_captured_step_gives_the_golden_tokens(golden, golden_cases, golden_sampling):
    case = golden_cases[0]
    loop = compiled_pipeline("aot_eager")
    for _ in range(2):  # the second generation reuses the graphs compiled in the first
        gen = loop.generate([case["prompt"]], golden_sampling, seeds=[case["seed"]])
        assert np.array_equal(gen.tokens, golden[f"{case['key']}/tokens"])
        assert max_err(gen.images, golden[f"{case['key']}/image"]) <= 1e-4


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_inductor_step_equals_eager(torch_pipeline, golden_cases, golden_sampling):
    case = golden_cases[2]

    def first_scale(loop: ScaleLoop):
        return loop.generate(
            [case["prompt"]], golden_sampling, seeds=[case["seed"]], keep_logits=True, on_scale=lambda e: e.scale < 1
        )

    compiled, eager = first_scale(compiled_pipeline("inductor")), first_scale(torch_pipeline)
    assert np.array_equal(compiled.tokens, eager.tokens) and compiled.tokens.shape == (1, 1 + 4)
    assert max_err(np.concatenate(compiled.logits, 1), np.concatenate(eager.logits, 1)) <= 1e-4
