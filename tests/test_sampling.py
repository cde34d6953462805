"""The two samplers: the portable rule is the same in numpy and torch; the official one is the golden one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from star_deploy.artifacts.manifest import load_manifest
from star_deploy.backends import torch_sampling
from star_deploy.backends.ort_backend import OrtBackend
from star_deploy.core.config import SCHEDULES, SamplingConfig
from star_deploy.core.sampling import (
    PortableSampler,
    exponential_race,
    filter_top_k_top_p,
    race_hash,
    race_uniforms,
    stream_keys,
)
from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.demo import DEMO_GRAPHS, DEMO_RESOLUTION
from star_deploy.errors import ConfigError
from star_deploy.runtime.pipeline import ScaleLoop

SETTINGS = [(0, 1.0), (50, 0.8), (1, 0.8), (200, 0.3), (0, 0.05)]


PINNED_DRAWS = [
    ((4.0, 600, 0.8), [0, 1], 9, (1024, 6), ["393 361 83 710 158 515", "828 947 30 518 704 982"]),
    (
        (3.0, 50, 0.8),
        [11, 2**62 + 5],
        3,
        (256, 9),
        ["213 183 66 183 30 179 145 24 125", "246 129 230 133 107 228 226 204 210"],
    ),
    ((1.5, 0, 1.0), [7], 0, (256, 9), ["57 35 255 134 243 35 207 229 92"]),
    ((6.0, 1, 0.8), [5], 5, (256, 9), ["178 45 162 156 23 140 134 251 118"]),
    ((4.0, 200, 0.3), [123456789], 7, (256, 9), ["113 115 109 214 85 214 200 186 65"]),
    ((4.0, 600, 0.8), [42, 43], 8, (4096, 4), ["1564 2071 1816 593", "80 3091 1737 736"]),
]
"""(cfg, top_k, top_p), seeds, scale of 10, (codebook size, tokens), the tokens drawn from ``fixed_logits``: the
portable rule as users' seeds have drawn it. Their closest race (log score of the winner over the runner-up) is
0.008 or more, far above float64 rounding, so every machine draws these exact tokens."""

DEMO_PROMPTS = [("a red circle on a blue background", 0), ("a green triangle in the top left on a white background", 1)]
DEMO_TOKENS = [
    "62 | 87 31 / 31 89 | 33 182 175 / 187 224 182 / 175 203 21 | 73 232 200 146 / 175 73 73 194 / 33 73 117 175 / "
    "247 33 175 222 | 96 248 152 96 212 232 / 117 194 200 33 21 109 / 248 182 182 182 21 0 / 232 28 254 188 182 248 / "
    "16 28 28 182 152 117 / 146 117 146 12 117 232 | 33 248 117 117 117 16 248 200 / 12 73 196 33 21 116 94 187 / "
    "117 84 33 102 73 172 90 94 / 73 33 102 182 182 102 175 73 / 73 33 102 106 247 102 182 117 / "
    "6 144 33 102 102 172 196 146 / 116 73 16 182 175 196 117 146 / 175 254 6 73 117 109 248 175",
    "211 | 162 188 / 254 188 | 39 191 109 / 162 45 109 / 232 232 109 | 101 189 41 248 / 88 185 24 232 / "
    "101 101 132 232 / 232 232 232 109 | 254 162 41 12 248 232 / 71 185 2 44 212 248 / 90 150 45 254 45 155 / "
    "222 128 232 96 222 232 / 162 162 162 222 222 232 / 96 96 232 232 232 232 | 45 188 254 88 84 203 152 143 / "
    "248 101 162 101 254 152 248 232 / 245 162 150 101 132 45 232 232 / 24 24 245 101 254 45 187 188 / "
    "182 132 132 53 212 232 232 232 / 8 222 162 45 212 152 109 232 / 187 116 187 187 12 12 248 232 / "
    "27 116 232 232 232 232 232 176",
]
"""The shipped demo's tokens at the default settings, scale by scale (|) and row by row (/). Closest race: 0.026."""


def fixed_logits(rows: int, tokens: int, vocab: int, salt: int) -> np.ndarray:
    """Logits in [-6, 6) from integer arithmetic only (the same bits on every machine and numpy version), with ties."""
    i = np.arange(rows * tokens * vocab, dtype=np.int64).reshape(rows, tokens, vocab)
    x = (i * 2654435761 + salt * 40503) % 65521
    logits = (x.astype(np.float32) / np.float32(65521)) * np.float32(12) - np.float32(6)
    logits[..., :8] = logits[..., :1]
    return logits


def token_text(text: str) -> list[int]:
    return [int(t) for t in text.replace("|", " ").replace("/", " ").split()]


@pytest.mark.parametrize("salt, case", list(enumerate(PINNED_DRAWS)))
def test_portable_draws_are_pinned(salt, case):
    """numpy and torch both draw the recorded tokens: a change to the rule in every implementation still fails."""
    (cfg, top_k, top_p), seeds, scale, (vocab, tokens), expected = case
    sampling = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p, sampler="portable")
    logits = fixed_logits(2 * len(seeds), tokens, vocab, salt)
    want = np.array([token_text(row) for row in expected], dtype=np.int64)
    assert np.array_equal(PortableSampler(sampling, seeds, num_scales=10)(logits, scale), want)
    device = torch_sampling.PortableSampler(sampling, seeds, 10, torch.device("cpu"))
    assert np.array_equal(device(torch.from_numpy(logits), scale).numpy(), want)


def test_seed_keys_and_hash_are_pinned():
    assert stream_keys(0, 0) == (1003035106, 954407347)
    assert stream_keys(5, 2) == (2764788149, 520347576)
    assert stream_keys(2**62 + 5, 9) == (1394141786, 3011746412)
    assert race_hash(np.arange(4, dtype=np.int64), stream_keys(5, 2)).tolist() == [
        2031738074,
        274045948,
        1690171772,
        1844111591,
    ]


def test_demo_tokens_are_pinned():
    """The shipped demo graphs on ONNX Runtime draw the recorded tokens for two prompts at the default settings."""
    manifest = load_manifest(DEMO_GRAPHS)
    loop = ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))
    prompts, seeds = [p for p, _ in DEMO_PROMPTS], [s for _, s in DEMO_PROMPTS]
    gen = loop.generate(prompts, SamplingConfig(), seeds=seeds)
    assert sum(side * side for side in SCHEDULES[DEMO_RESOLUTION]) == gen.tokens.shape[1]
    for got, text in zip(gen.tokens, DEMO_TOKENS, strict=True):
        assert got.tolist() == token_text(text)


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
