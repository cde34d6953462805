"""The PyTorch reference against the golden data of the official implementation (CPU, fp32)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import golden_errors, load_golden_model, max_err

from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.runtime.pipeline import ScaleLoop

TEXT_TOL = 1e-5
LOGITS_TOL = 1e-4
IMAGE_TOL = 1e-4


def test_tokenizer_matches_golden_ids(tiny_model, golden, golden_cases):
    tok = PromptTokenizer(tiny_model.tokenizer_dir)
    for case in golden_cases:
        t = tok([case["prompt"]])
        assert np.array_equal(t.input_ids, golden[f"{case['key']}/input_ids"])
        assert np.array_equal(t.attention_mask, golden[f"{case['key']}/attention_mask"])


def test_text_encoder_matches_golden(torch_pipeline, golden, golden_cases):
    for case in golden_cases:
        k = case["key"]
        ids, mask = golden[f"{k}/input_ids"], golden[f"{k}/attention_mask"]
        hidden, pooled = torch_pipeline.backend.encode_text(ids, mask)
        assert max_err(hidden, golden[f"{k}/text_hidden"]) <= TEXT_TOL
        assert max_err(pooled, golden[f"{k}/text_pooled"]) <= TEXT_TOL


@pytest.mark.parametrize("index", range(6))
def test_teacher_forced_logits_and_image(torch_pipeline, golden, golden_cases, golden_sampling, index):
    logits_err, image_err = golden_errors(torch_pipeline, golden, golden_cases[index], golden_sampling)
    assert logits_err <= LOGITS_TOL and image_err <= IMAGE_TOL


@pytest.mark.parametrize("index", range(6))
def test_sampled_tokens_and_image_match_golden(torch_pipeline, golden, golden_cases, golden_sampling, index):
    case = golden_cases[index]
    gen = torch_pipeline.generate([case["prompt"]], golden_sampling, seeds=[case["seed"]])
    assert np.array_equal(gen.tokens, golden[f"{case['key']}/tokens"])
    assert max_err(gen.images, golden[f"{case['key']}/image"]) <= IMAGE_TOL


def test_decoding_golden_tokens(torch_pipeline, golden, golden_sampling):
    gen = torch_pipeline.generate(["a red car."], golden_sampling, seeds=[1], teacher_tokens=golden["p0_s1/tokens"])
    assert max_err(gen.images, golden["p0_s1/image_from_tokens"]) <= IMAGE_TOL


def test_batched_equals_one_by_one(torch_pipeline, golden_cases, golden_sampling):
    prompts = [golden_cases[0]["prompt"], golden_cases[2]["prompt"]]
    batched = torch_pipeline.generate(prompts, golden_sampling, seeds=[1, 7])
    for i, (prompt, seed) in enumerate(zip(prompts, [1, 7])):
        single = torch_pipeline.generate([prompt], golden_sampling, seeds=[seed])
        assert np.array_equal(batched.tokens[i], single.tokens[0])
        assert max_err(batched.images[i], single.images[0]) <= IMAGE_TOL


def test_different_seeds_differ(torch_pipeline, golden_sampling):
    a = torch_pipeline.generate(["a red car."], golden_sampling, seeds=[1])
    b = torch_pipeline.generate(["a red car."], golden_sampling, seeds=[2])
    assert not np.array_equal(a.tokens, b.tokens)


def test_channels_last_decoder_matches_golden(golden, golden_sampling):
    """The decoder layout the torch backend uses on a GPU, checked on CPU against the golden image."""
    from star_deploy.backends.torch_backend import TorchBackend

    model = load_golden_model()
    pipeline = ScaleLoop(TorchBackend(model, channels_last=True), PromptTokenizer(model.tokenizer_dir))
    assert pipeline.backend.memory_format == torch.channels_last
    assert model.vqvae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    gen = pipeline.generate(["a red car."], golden_sampling, seeds=[1], teacher_tokens=golden["p0_s1/tokens"])
    assert gen.images.flags.c_contiguous
    assert max_err(gen.images, golden["p0_s1/image_from_tokens"]) <= IMAGE_TOL


def test_decoder_layout_defaults_on_cpu():
    """float32 keeps NCHW (batch-invariant to 1e-5); bfloat16 runs channels-last, whose oneDNN
    kernels are the fast ones for it (NCHW bf16 convolutions are ~36x slower on AVX2 CPUs)."""
    from star_deploy.backends.torch_backend import TorchBackend

    assert TorchBackend(load_golden_model()).memory_format == torch.contiguous_format
    assert TorchBackend(load_golden_model(), dtype=torch.bfloat16).memory_format == torch.channels_last


AVX2 = ["avx2", "fma", "f16c"]
AVX512 = [*AVX2, "avx512f", "avx512_vnni"]


@pytest.mark.parametrize(
    "dtype, flags, slow",
    [
        ("bfloat16", AVX2, True),
        ("bfloat16", AVX512, True),
        ("bfloat16", [*AVX512, "avx512_bf16"], False),
        ("bfloat16", [*AVX2, "amx_tile", "amx_bf16"], False),
        ("float16", [*AVX512, "avx512_bf16", "amx_bf16"], True),
        ("float16", [*AVX512, "avx512_fp16"], False),
        ("float32", AVX2, False),
        ("float32", [], False),
    ],
)
def test_reduced_precision_on_a_cpu_without_it_is_called_slow(dtype, flags, slow, caplog):
    """Fixed CPU flag lists, literal answers: bf16 is native with AVX512-BF16 or AMX-BF16, fp16 with AVX512-FP16."""
    from star_deploy.backends.torch_backend import warn_if_emulated

    with caplog.at_level(logging.WARNING, logger="star_deploy"):
        warn_if_emulated(dtype, flags)
    warned = [r.getMessage() for r in caplog.records if "slower than float32" in r.getMessage()]
    assert len(warned) == int(slow)
    assert all(dtype in w and "--dtype float32" in w for w in warned)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_reduced_precision_backend_reads_this_cpu(dtype, caplog):
    """TorchBackend warns by this CPU's flags, by the rule written out here rather than the code's."""
    from star_deploy.backends.torch_backend import TorchBackend
    from star_deploy.core.cpu_isa import cpu_flags

    native = {torch.bfloat16: {"avx512_bf16", "amx_bf16"}, torch.float16: {"avx512_fp16"}}[dtype]
    with caplog.at_level(logging.WARNING, logger="star_deploy"):
        TorchBackend(load_golden_model(), dtype=dtype)
    warned = [r.getMessage() for r in caplog.records if "slower than float32" in r.getMessage()]
    assert bool(warned) == native.isdisjoint(cpu_flags())
