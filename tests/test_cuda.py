"""The torch backend on a CUDA GPU: golden parity in fp32, fp16 fidelity, CUDA graphs.

Skipped on machines without CUDA; `benchmarks/gpu.sh` runs them on a GPU machine. CUDA
generators draw other numbers than CPU ones, so sampled tokens are compared between CUDA
pipelines, and against the golden data only under teacher forcing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import golden_errors, load_golden_model, max_err

from star_deploy.backends.compiled_block import graphs_compiled
from star_deploy.backends.decoder_layout import LAYOUTS
from star_deploy.backends.torch_backend import TorchBackend
from star_deploy.bench.ops import cuda_kernels_per_block
from star_deploy.core.config import SamplingConfig
from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.evaluation.parity import THRESHOLDS, failures, fidelity, token_agreement
from star_deploy.runtime.pipeline import ScaleLoop

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LOGITS_TOL = 1e-3
IMAGE_TOL = 1e-3
"""fp32 on CUDA, TF32 off for matmuls and convolutions (with cuDNN's default TF32 the image is 5e-3 off)."""
PROMPTS = ["a red car.", "A cute dog sitting on the grass, high quality", ""]
SAMPLING = SamplingConfig(cfg=4.0, top_k=50, top_p=0.8)


def cuda_pipeline(
    dtype: torch.dtype = torch.float32, cuda_graphs: bool = False, compile: bool = False, **options
) -> ScaleLoop:
    model = load_golden_model()
    backend = TorchBackend(model, "cuda", dtype, cuda_graphs, compile, **options)
    return ScaleLoop(backend, PromptTokenizer(model.tokenizer_dir))


@pytest.fixture(scope="module")
def fp32_cuda() -> ScaleLoop:
    return cuda_pipeline()


@pytest.fixture
def no_tf32():
    """cuDNN convolutions default to TF32 (10-bit mantissa): off, to compare true fp32."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yield
    torch.backends.cuda.matmul.allow_tf32 = matmul


@pytest.mark.parametrize("index", range(6))
def test_cuda_fp32_teacher_forced_matches_golden(fp32_cuda, golden, golden_cases, golden_sampling, no_tf32, index):
    logits_err, image_err = golden_errors(fp32_cuda, golden, golden_cases[index], golden_sampling)
    assert logits_err <= LOGITS_TOL and image_err <= IMAGE_TOL


def test_cuda_fp16_meets_fp16_thresholds(fp32_cuda):
    result = fidelity(fp32_cuda, cuda_pipeline(torch.float16), PROMPTS, SAMPLING, [1, 2, 3])
    assert failures(result, THRESHOLDS["fp16"]) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_graphs_replay_the_eager_result(dtype):
    """Captured on the first generation, replayed on later ones with other prompts, seeds and CFG.

    Tokens are equal; images within one grey level (cuDNN autotuning may pick another
    convolution kernel for each backend's decoder).
    """
    eager, graphed = cuda_pipeline(dtype), cuda_pipeline(dtype, cuda_graphs=True)
    other_cfg = SamplingConfig(cfg=2.0, top_k=SAMPLING.top_k, top_p=SAMPLING.top_p)
    runs = ((PROMPTS[:2], [1, 2], SAMPLING), (PROMPTS[1:], [7, 8], other_cfg), (PROMPTS[:1], [3], SAMPLING))
    for prompts, seeds, sampling in runs:
        want = eager.generate(prompts, sampling, seeds)
        got = graphed.generate(prompts, sampling, seeds)
        assert np.array_equal(got.tokens, want.tokens)
        assert max_err(got.images, want.images) <= 1 / 255
    kinds = [key if isinstance(key, str) else key[0] for key in graphed.backend.graphs.captured]
    scales = len(graphed.config.patch_nums)
    assert sorted(kinds) == sorted(["context", "decode"] + ["step", "sample", "update"] * scales)


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_compiled_step_on_cuda(fp32_cuda, no_tf32, cuda_graphs):
    """Inductor's kernels in fp32 give the eager tokens; in fp16 they meet the fp16 thresholds against fp32."""
    compiled = cuda_pipeline(compile=True, cuda_graphs=cuda_graphs)
    for seeds in ([1, 2, 3], [4, 5, 6]):
        want, got = fp32_cuda.generate(PROMPTS, SAMPLING, seeds), compiled.generate(PROMPTS, SAMPLING, seeds)
        assert np.mean(got.tokens == want.tokens) >= 0.999
    result = fidelity(fp32_cuda, cuda_pipeline(torch.float16, cuda_graphs, compile=True), PROMPTS, SAMPLING, [1, 2, 3])
    assert failures(result, THRESHOLDS["fp16"]) == [] and result.teacher_forced_token_agreement >= 0.99


def test_event_clock_times_without_waiting(fp32_cuda):
    gen = fp32_cuda.generate(PROMPTS[:1], SAMPLING, [1])
    assert len(gen.times.steps) == fp32_cuda.config.num_scales and gen.times.total > 0
    assert type(fp32_cuda.backend.clock()).__name__ == "CudaEventClock"


def test_portable_sampler_draws_the_cpu_tokens_on_cuda(fp32_cuda, torch_pipeline, no_tf32):
    """One seed, two devices: the portable sampler gives the CPU's tokens on the GPU (fp32, TF32 off)."""
    want = torch_pipeline.generate(PROMPTS, SAMPLING, seeds=[1, 2, 3])
    got = fp32_cuda.generate(PROMPTS, SAMPLING, seeds=[1, 2, 3])
    assert SAMPLING.sampler == "portable"
    assert token_agreement(got.tokens, want.tokens) >= 0.999
    assert max_err(got.images, want.images) <= IMAGE_TOL


def test_cached_unconditional_text_row_on_cuda(fp32_cuda):
    """The "" row encoded alone and reused equals that row of a batched encoding on the GPU too
    (on CPU they are bitwise equal; cuBLAS may choose other kernels for other row counts)."""
    backend = fp32_cuda.backend
    toks = fp32_cuda.tokenizer(PROMPTS)
    whole = [backend.to_numpy(a) for a in backend._encode_rows(toks.input_ids, toks.attention_mask)]
    cached = [backend.to_numpy(a) for a in backend.encode_text(toks.input_ids, toks.attention_mask)]
    assert all(max_err(c, w) <= 1e-4 for c, w in zip(cached, whole, strict=True))


@pytest.mark.parametrize("channels_last", [True, False])
def test_both_decoder_layouts_match_golden_on_cuda(golden, golden_cases, golden_sampling, no_tf32, channels_last):
    _, image_err = golden_errors(cuda_pipeline(channels_last=channels_last), golden, golden_cases[0], golden_sampling)
    assert image_err <= IMAGE_TOL


def test_decoder_layout_is_measured_on_cuda(fp32_cuda):
    """On a GPU the default times both layouts at the first decode and keeps the faster."""
    fp32_cuda.generate(PROMPTS[:1], SAMPLING, [1])
    choice = fp32_cuda.backend.decoder_layout
    assert choice.measured and set(choice.seconds) == set(LAYOUTS)
    assert choice.layout == min(choice.seconds, key=choice.seconds.get)


def test_attention_runs_fused_sdpa_kernels_on_cuda():
    """With the math (unfused) SDPA backend disallowed, every attention of an fp16 generation still runs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fused = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    loop = cuda_pipeline(torch.float16)
    with sdpa_kernel(fused):
        gen = loop.generate(PROMPTS, SAMPLING, [1, 2, 3])
    assert np.isfinite(gen.images).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernels_per_block_on_cuda(dtype):
    """The CUDA kernels one eager block launches per step: the CPU count (29 / 34 aten ops) plus GEMM helpers."""
    model = load_golden_model()
    model.to("cuda", dtype)
    assert all(cuda_kernels_per_block(model, scale) <= 45 for scale in (0, 5))


def test_regional_compile_on_cuda_restarts_from_its_cache(tmp_path):
    """At most 2 block graphs for the schedule; a second backend on the saved folder compiles no kernel."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import fresh_cache

    folder = tmp_path / "compiled"
    torch._dynamo.reset()
    with fresh_cache():
        before = graphs_compiled()
        want = cuda_pipeline(torch.float16, compile=True, compile_cache=folder).generate(PROMPTS, SAMPLING, [1, 2, 3])
        assert 1 <= graphs_compiled() - before <= 2
    torch._dynamo.reset()
    misses = counters["inductor"]["fxgraph_cache_miss"]
    with fresh_cache():
        got = cuda_pipeline(torch.float16, compile=True, compile_cache=folder).generate(PROMPTS, SAMPLING, [1, 2, 3])
    assert counters["inductor"]["fxgraph_cache_miss"] == misses
    assert np.array_equal(got.tokens, want.tokens)
