"""The two samplers: the portable rule is the same in numpy and torch; the official one is the golden one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from star_deploy.backends import torch_sampling
from star_deploy.core.config import SamplingConfig
from star_deploy.core.sampling import (
    PortableSampler,
    exponential_race,
    filter_top_k_top_p,
    race_hash,
    race_uniforms,
    stream_keys,
)
from star_deploy.errors import ConfigError

SETTINGS = [(0, 1.0), (50, 0.8), (1, 0.8), (200, 0.3), (0, 0.05)]


def random_logits(seed: int, rows: int = 4, tokens: int = 9, vocab: int = 256) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0, 3, (rows, tokens, vocab)).astype(np.float32)
    logits[..., :8] = logits[..., :1]  # ties, which a stable order must break the same way everywhere
    return logits


@pytest.mark.parametrize("top_k, top_p", SETTINGS)
def test_portable_sampler_is_the_same_in_numpy_and_torch(top_k, top_p):
    sampling = SamplingConfig(cfg=3.0, top_k=top_k, top_p=top_p, sampler="portable")
    seeds = [11, 2**62 + 5]
    host = PortableSampler(sampling, seeds, num_scales=10)
    device = torch_sampling.PortableSampler(sampling, seeds, 10, torch.device("cpu"))
    for scale in range(10):
        logits = random_logits(scale)
        want = host(logits, scale)
        got = device(torch.from_numpy(logits), scale).numpy()
        assert want.dtype == np.int64 and want.shape == (2, 9)
        assert np.array_equal(want, got), f"scale {scale}"


def test_a_portable_draw_reads_only_its_tensor_inputs():
    """What a CUDA graph of the draw relies on: the draw made for one generation, fed another's CFG
    strength and seed keys, gives that generation's tokens (no host value is baked in)."""
    first = torch_sampling.PortableSampler(
        SamplingConfig(cfg=1.5, top_k=50, top_p=0.8), [1, 2], 10, torch.device("cpu")
    )
    other = torch_sampling.PortableSampler(
        SamplingConfig(cfg=6.0, top_k=50, top_p=0.8), [9, 3], 10, torch.device("cpu")
    )
    for scale in (2, 9):
        logits = torch.from_numpy(random_logits(scale))
        want = other(logits, scale)
        assert not torch.equal(want, first(logits, scale))
        assert torch.equal(first.draw(logits, other.guidance[scale], other.keys[scale]), want)


@pytest.mark.parametrize("rounded", [False, True], ids=["distinct", "ties-at-kth"])
def test_portable_sampler_on_top_k_candidates_draws_as_the_full_rule(rounded):
    """The host sampler races only each token's top-k candidates; the torch sampler races the whole
    codebook. At the default settings and codebook size they draw the same tokens, also where
    rounded logits tie at the k-th value (the host then filters whole rows)."""
    sampling = SamplingConfig(cfg=4.0, top_k=600, top_p=0.8, sampler="portable")
    seeds = [0, 77]
    host = PortableSampler(sampling, seeds, num_scales=10)
    device = torch_sampling.PortableSampler(sampling, seeds, 10, torch.device("cpu"))
    for scale in (3, 9):
        logits = random_logits(scale, tokens=64, vocab=4096)
        logits = np.round(logits) if rounded else logits
        assert np.array_equal(host(logits, scale), device(torch.from_numpy(logits), scale).numpy())


@pytest.mark.parametrize("top_k, top_p", SETTINGS)
def test_numpy_filter_matches_the_official_filter(top_k, top_p):
    logits = random_logits(1)[0].astype(np.float64)
    want = torch_sampling.filter_top_k_top_p(torch.from_numpy(logits), top_k, top_p, stable=True).numpy()
    assert np.array_equal(np.isinf(filter_top_k_top_p(logits, top_k, top_p)), np.isinf(want))


def test_race_draws_in_proportion_and_never_a_masked_token():
    probs = np.array([0.0, 0.25, 0.0, 0.75, 0.0])
    counters = np.arange(20000 * 5, dtype=np.int64).reshape(20000, 5)
    draws = exponential_race(np.broadcast_to(probs, (20000, 5)), race_uniforms(counters, stream_keys(3, 0)))
    assert set(np.unique(draws)) == {1, 3}
    assert abs(np.mean(draws == 3) - 0.75) < 0.02


def test_hashed_uniforms_are_uniform_and_keyed():
    counters = np.arange(200000, dtype=np.int64)
    u = race_uniforms(counters, stream_keys(5, 2))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 19000
    assert not np.array_equal(u, race_uniforms(counters, stream_keys(5, 3)))
    assert not np.array_equal(u, race_uniforms(counters, stream_keys(6, 2)))
    assert np.array_equal(
        race_hash(torch.from_numpy(counters), stream_keys(5, 2)).numpy(), race_hash(counters, stream_keys(5, 2))
    )


def test_unknown_sampler_is_refused():
    with pytest.raises(ConfigError, match="sampler must be one of portable, official"):
        SamplingConfig(sampler="fast")


def test_portable_tokens_agree_across_backends(torch_pipeline, ort_pipeline):
    """One seed, two runtimes (torch and ONNX Runtime, fp32): the same tokens and image."""
    sampling = SamplingConfig(cfg=4.0, top_k=50, top_p=0.8)
    prompts = ["a red car.", "A cute dog sitting on the grass, high quality"]
    a = torch_pipeline.generate(prompts, sampling, seeds=[3, 9])
    b = ort_pipeline.generate(prompts, sampling, seeds=[3, 9])
    assert np.array_equal(a.tokens, b.tokens)
    assert np.abs(a.images - b.images).max() <= 1e-4


def test_portable_tokens_do_not_depend_on_the_batch(ort_pipeline):
    sampling = SamplingConfig(cfg=4.0, top_k=50, top_p=0.8)
    batched = ort_pipeline.generate(["a red car.", "a dog", ""], sampling, seeds=[4, 5, 6])
    single = ort_pipeline.generate(["a dog"], sampling, seeds=[5])
    assert np.array_equal(batched.tokens[1], single.tokens[0])
