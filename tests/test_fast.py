"""Fast modes: guidance stopped after a scale and cached token pruning, on torch and ONNX Runtime.

Exact generation stays what the golden tests check; these tests check what each rung keeps
(tokens before the cut), that backends agree token for token in every rung, and that bad
knobs are refused in one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import GOLDEN
from typer.testing import CliRunner

from star_deploy.backends.kv_cache import KVCache
from star_deploy.backends.ort_backend import compact_rows
from star_deploy.cli import app
from star_deploy.core.config import SamplingConfig
from star_deploy.core.fast import EXACT, FastMode, resolve_fast, scale_plans
from star_deploy.core.pruning import kept_index
from star_deploy.errors import ConfigError
from star_deploy.files.images import read_png
from star_deploy.model.graph_modules import PrunedStepGraph, StepGraph

PROMPTS = ["a red circle on a blue background", "a small green square"]
SEEDS = [3, 11]
SAMPLING = SamplingConfig(cfg=4.0, top_k=64, top_p=0.9)
CUT = 7
"""Guidance on the first 7 of the golden model's 10 scales."""
RUNGS = {
    "fast1": FastMode(1, cfg_until=CUT),
    "fast2": FastMode(2, cfg_until=CUT, keep=(0.5, 0.25)),
}


def generate(pipeline, mode: FastMode):
    return pipeline.generate(PROMPTS, SAMPLING, seeds=SEEDS, fast=mode)


@pytest.fixture(scope="module")
def exact_tokens(torch_pipeline) -> np.ndarray:
    return np.asarray(generate(torch_pipeline, EXACT).tokens)


@pytest.mark.parametrize("rung", sorted(RUNGS))
def test_every_rung_draws_the_same_tokens_on_torch_and_onnxruntime(torch_pipeline, ort_pipeline, rung):
    a, b = generate(torch_pipeline, RUNGS[rung]), generate(ort_pipeline, RUNGS[rung])
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert np.abs(np.asarray(a.images) - np.asarray(b.images)).max() < 1e-4


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_rung_one_keeps_every_token_before_the_cut(torch_pipeline, ort_pipeline, exact_tokens, backend):
    pipeline = torch_pipeline if backend == "torch" else ort_pipeline
    tokens = np.asarray(generate(pipeline, RUNGS["fast1"]).tokens)
    before = pipeline.config.scale_offsets()[CUT]
    np.testing.assert_array_equal(tokens[:, :before], exact_tokens[:, :before])
    assert not np.array_equal(tokens[:, before:], exact_tokens[:, before:])


def test_exact_mode_is_the_default_generation(torch_pipeline, exact_tokens):
    plain = torch_pipeline.generate(PROMPTS, SAMPLING, seeds=SEEDS)
    np.testing.assert_array_equal(plain.tokens, exact_tokens)


def test_plans_are_static_and_prune_only_the_last_scales(tiny_model):
    config = tiny_model.config
    plans = scale_plans(config, RUNGS["fast2"])
    sides = config.patch_nums
    assert [p.guided for p in plans] == [k < CUT for k in range(len(sides))]
    assert [p.kept for p in plans[-2:]] == [round(0.5 * sides[-2] ** 2), round(0.25 * sides[-1] ** 2)]
    assert [p.kept for p in plans[:-2]] == [s * s for s in sides[:-2]]
    assert [p.residual for p in plans] == [k >= len(sides) - 3 for k in range(len(sides))]
    assert scale_plans(config) == scale_plans(config, EXACT)


def test_pruned_step_with_every_token_kept_is_the_step(tiny_model):
    """The pruned-step graph keeping all tokens equals the plain step (logits and K/V), with a zero residual prior."""
    t = tiny_model.transformer
    c, rows, side = t.config.width, 2, 3
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, side * side, c, generator=gen)
    angles = torch.randn(side * side, t.config.head_dim // 2, generator=gen)
    cos, sin = angles.cos(), angles.sin()
    d, h, hd, n = t.config.depth, t.config.heads, t.config.head_dim, 5
    text_k = [torch.randn(1, h, n, hd, generator=gen) for _ in range(d)]
    text_v = [torch.randn(1, h, n, hd, generator=gen) for _ in range(d)]
    past = [torch.randn(4, rows, h, hd, generator=gen) for _ in range(2 * d)]
    bias = torch.zeros(1, 1, 1, n)
    with torch.inference_mode():
        step = StepGraph(t)(x, cos, sin, bias, *text_k, *text_v, *past)
        index = torch.arange(9).expand(rows, 9)
        prior, restore = torch.zeros(rows, 2, 2, c), torch.full((side, 2), 0.5)
        pruned = PrunedStepGraph(t)(
            x.view(rows, side, side, c), index, cos, sin, prior, restore, bias, *text_k, *text_v, *past
        )
    torch.testing.assert_close(pruned[0], step[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(pruned[2:], step[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_kept_tokens_are_the_most_deviating_and_shared_by_both_rows():
    x = np.zeros((4, 6, 3), dtype=np.float32)
    x[0, [1, 4]] = 5.0
    x[1, [0, 2]] = 3.0
    index = kept_index(x, 2, batch=2)
    np.testing.assert_array_equal(index, [[1, 4], [0, 2], [1, 4], [0, 2]])


def test_cache_keeps_the_conditional_rows_in_place(tiny_model):
    config = tiny_model.config
    cache = KVCache(config, 4, torch.float32, torch.device("cpu"))
    cache.length = 30
    filled = [torch.randn(30, 4, *cache.head_shape) for _ in range(2 * config.transformer.depth)]
    for layer, values in zip(cache.keys + cache.values, filled):
        layer[:30].copy_(values)
    cache.keep_conditional_rows()
    for got, want in zip(cache.past(), filled):
        torch.testing.assert_close(got, want[:, :2], rtol=0, atol=0)
    cache.reset()
    assert cache.rows == 4 and cache.keys[0].shape[1] == 4


def test_host_cache_compaction_matches_slicing():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((37, 6, 5))
    flat = data.copy().reshape(-1)
    compact_rows(flat, 37, 6, 3, 5)
    np.testing.assert_array_equal(flat[: 37 * 3 * 5].reshape(37, 3, 5), data[:, :3])


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"level": 3}, "--fast 3: choose a level in 0, 1, 2"),
        ({"level": 1, "cfg_until": 0}, "--cfg-until 0: guidance runs on the first K scales; choose K from 1 to 10"),
        ({"level": 1, "cfg_until": 11}, "--cfg-until 11"),
        ({"level": 2, "cfg_until": 5, "keep": (0.0, 0.5)}, "--keep 0: a keep ratio is the share of tokens kept"),
        ({"level": 2, "cfg_until": 5, "keep": (1.5,)}, "--keep 1.5: a keep ratio"),
        ({"level": 1}, "--fast 1: no preset for this model (256 px, depth 2); give its knobs instead"),
        ({"level": 1, "keep": (0.5,)}, "--keep belongs to --fast 2"),
    ],
)
def test_bad_knobs_are_refused_in_one_line(tiny_model, knobs, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as info:
        resolve_fast(tiny_model.config, **knobs)
    assert "\n" not in str(info.value)


def test_a_knob_alone_implies_its_level(tiny_model):
    assert resolve_fast(tiny_model.config, cfg_until=4).level == 1
    assert resolve_fast(tiny_model.config, cfg_until=4, keep=(0.5,)).level == 2
    assert resolve_fast(tiny_model.config) is EXACT


TINY_RUN = ["--weights", str(GOLDEN), "--resolution", "256", "--backend", "torch", "--top-k", "50"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fast", "1"], "--fast 1: no preset for this model (256 px, depth 2); give its knobs instead"),
        (["--cfg-until", "11"], "--cfg-until 11: guidance runs on the first K scales; choose K from 1 to 10"),
        (["--fast", "2", "--cfg-until", "5", "--keep", "0.5,0"], "--keep 0: a keep ratio is the share of tokens"),
        (["--keep", "1.5"], "--keep 1.5: a keep ratio is the share of tokens kept"),
        (["--keep", "half"], "--keep 'half': give keep ratios separated by commas"),
    ],
)
def test_run_refuses_bad_fast_knobs_in_one_line(tmp_path, flags, message):
    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["run", "a red car.", "-o", str(out), *TINY_RUN, *flags])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_run_records_the_rung_in_the_png(tmp_path):
    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["run", "a red car.", "-o", str(out), *TINY_RUN, "--cfg-until", "7"])
    assert result.exit_code == 0, result.output
    assert read_png(out)[1]["fast"] == "fast 1, cfg-until 7"


def test_pipeline_call_runs_and_reports_the_rung(torch_pipeline, exact_tokens):
    from star_deploy.api import StarPipeline

    pipe = StarPipeline.from_pretrained(GOLDEN, backend="torch", resolution=256)
    knobs = {"guidance_scale": 4.0, "top_k": 64, "top_p": 0.9, "seed": SEEDS, "output_type": "np"}
    out = pipe(PROMPTS, fast=2, cfg_until=CUT, keep="0.5,0.25", **knobs)
    assert out.fast == RUNGS["fast2"]
    np.testing.assert_array_equal(out.tokens, generate(torch_pipeline, RUNGS["fast2"]).tokens)
    assert pipe(PROMPTS, **knobs).fast == EXACT


DEMO_FAST_ACCURACY = 0.82
"""Held-out accuracy bound of the demo's preset rungs (ONNX Runtime fp32, shipped graphs, 35 combinations x 2
seeds): measured 0.843 (exact: 0.886); over 4 seeds 0.857 against 0.864 (docs/benchmarks.md)."""


def test_demo_rungs_keep_their_held_out_accuracy():
    """The demo preset's rungs draw held-out combinations right at the measured rate; its level 2 is its level 1."""
    from star_deploy.artifacts.manifest import load_manifest
    from star_deploy.backends.ort_backend import OrtBackend
    from star_deploy.core.tokenizer import PromptTokenizer
    from star_deploy.demo import DEMO_GRAPHS
    from star_deploy.runtime.pipeline import ScaleLoop
    from tools.demo_training.evaluate import read_image
    from tools.demo_training.train import held_out_prompts

    manifest = load_manifest(DEMO_GRAPHS)
    loop = ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))
    level1, level2 = resolve_fast(loop.config, 1), resolve_fast(loop.config, 2)
    assert scale_plans(loop.config, level2) == scale_plans(loop.config, level1) != scale_plans(loop.config)
    cases = held_out_prompts(2)
    gen = loop.generate([p for p, _, _ in cases], SamplingConfig(), seeds=[s for _, _, s in cases], fast=level1)
    right = [all(read_image(img).matches(combo)) for img, (_, combo, _) in zip(gen.images, cases)]
    assert np.mean(right) >= DEMO_FAST_ACCURACY, f"{np.mean(right):.3f} right"


def test_presets_prune_only_large_scales():
    from star_deploy.core.config import SCHEDULES
    from star_deploy.core.fast import FAST_PRESETS, PRESET_MIN_PRUNED_SIDE

    for (resolution, _), chosen in FAST_PRESETS.items():
        pruned = SCHEDULES[resolution][len(SCHEDULES[resolution]) - len(chosen.keep) :]
        assert all(side >= PRESET_MIN_PRUNED_SIDE for side in pruned), (resolution, pruned)


DECODER_INT8_PSNR_DB = 28.0
"""The int8 decoder against the fp32 one on the golden model's random-weight decoder: measured 29.9 dB (the
trained demo decoder: 38-42 dB; docs/fast.md)."""


def test_int8_decoder_keeps_tokens_and_stays_close_to_fp32(artifacts_fp32, ort_pipeline, tmp_path):
    import json

    import onnx

    from star_deploy.artifacts.manifest import MANIFEST, load_manifest
    from star_deploy.backends.ort_backend import OrtBackend
    from star_deploy.core.tokenizer import PromptTokenizer
    from star_deploy.runtime.pipeline import ScaleLoop

    out = tmp_path / "dec8"
    result = CliRunner().invoke(app, ["quantize", str(artifacts_fp32), "--out", str(out), "--decoder"])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    assert manifest.precision == "fp32"
    assert json.loads((out / MANIFEST).read_text())["quantization"]["graphs"] == ["vq_decoder"]
    ops = [n.op_type for n in onnx.load(str(manifest.path("vq_decoder"))).graph.node]
    assert ops.count("QuantizeLinear") >= ops.count("Conv") > 0
    loop = ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))
    a, b = generate(ort_pipeline, RUNGS["fast2"]), generate(loop, RUNGS["fast2"])
    np.testing.assert_array_equal(a.tokens, b.tokens)
    mse = np.mean((np.asarray(a.images, np.float64) - np.asarray(b.images)) ** 2)
    psnr = 10 * np.log10(1 / mse)
    assert psnr >= DECODER_INT8_PSNR_DB, f"int8 decoder PSNR {psnr:.1f} dB"


def test_quantize_refuses_decoder_with_dynamic(artifacts_fp32, tmp_path):
    out = tmp_path / "q"
    result = CliRunner().invoke(app, ["quantize", str(artifacts_fp32), "--out", str(out), "--decoder", "--dynamic"])
    assert result.exit_code == 2 and "--decoder and --dynamic: choose one" in result.stderr
    assert not out.exists()


def test_bench_runs_the_rung_on_all_but_the_baseline_and_records_it(artifacts_fp32, tmp_path):
    import json

    out = tmp_path / "bench.json"
    args = ["bench", *TINY_RUN[:4], "--artifacts", str(artifacts_fp32), "--backends", "torch-eager,torch,onnxruntime"]
    args += ["--repeat", "1", "--warmup", "0", "--json", str(out), "--cfg-until", str(CUT)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    label = {"label": "fast 1, cfg-until 7", "baseline": "exact"}
    assert report["settings"]["fast"] == {"level": 1, "cfg_until": CUT, "keep": [], "decoder": None} | label
    backends = report["backends"]
    for name in ("torch", "onnxruntime"):
        fidelity = backends[name]["fidelity"]
        assert fidelity["tokens_equal_fp32"] is False and fidelity["teacher_forced_token_agreement"] < 1.0


def test_bench_refuses_a_bad_level_before_loading(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--fast", "5", "--random-weights"])
    assert result.exit_code == 2 and "--fast 5: choose a level in 0, 1, 2" in result.stderr


DECODER_BF16_PSNR_DB = 40.0
"""The bf16 decoder (torch) against the fp32 one on the golden model's random-weight decoder, same tokens: measured
once at 43.0 dB over both images (42.5 and 43.6 dB each, AMX-BF16 CPU); docs/fast.md has the demo and 256-d16 figures.
The upper bound of the test (80 dB) fails a decoder that silently stayed in float32."""


def test_bf16_decoder_keeps_tokens_stays_close_to_fp32_and_is_recorded(torch_pipeline):
    from star_deploy.api import StarPipeline

    pipe = StarPipeline.from_pretrained(GOLDEN, backend="torch", resolution=256, decoder_dtype="bfloat16")
    assert pipe.loop.backend.decoder_dtype == torch.bfloat16 and pipe.loop.backend.dtype == torch.float32
    knobs = {"guidance_scale": 4.0, "top_k": 64, "top_p": 0.9, "seed": SEEDS, "output_type": "np"}
    out = pipe(PROMPTS, fast=2, cfg_until=CUT, keep="0.5,0.25", **knobs)
    reference = generate(torch_pipeline, RUNGS["fast2"])
    np.testing.assert_array_equal(out.tokens, reference.tokens)
    mse = np.mean((np.asarray(out.images, np.float64) - np.asarray(reference.images).transpose(0, 2, 3, 1)) ** 2)
    psnr = 10 * np.log10(1 / mse)
    assert DECODER_BF16_PSNR_DB <= psnr < 80, f"bf16 decoder PSNR {psnr:.1f} dB"
    assert out.fast.label() == "fast 2, cfg-until 7, keep 0.5,0.25, decoder bfloat16"
    assert pipe(PROMPTS[0], **(knobs | {"seed": 0})).fast == FastMode(decoder="bfloat16") != EXACT


def test_run_records_the_bf16_decoder_in_the_png(tmp_path):
    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["run", "a red car.", "-o", str(out), *TINY_RUN, "--decoder-dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert read_png(out)[1]["fast"] == "fast 0, decoder bfloat16"


def test_decoder_dtype_is_refused_on_graph_backends_in_one_line(tmp_path):
    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["run", "a red circle", "-o", str(out), "--decoder-dtype", "bfloat16"])
    assert result.exit_code == 2, result.output
    assert "decoder_dtype applies to backend='torch', not to backend='onnxruntime'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_bf16_decoder_on_a_cpu_without_bf16_warns_that_it_is_emulated(tiny_model, monkeypatch, caplog):
    import copy
    import logging

    from star_deploy.backends import torch_backend

    monkeypatch.setattr(torch_backend, "cpu_flags", lambda: ["avx2", "fma", "avx512f"])
    with caplog.at_level(logging.WARNING, logger="star_deploy"):
        torch_backend.TorchBackend(copy.deepcopy(tiny_model), decoder_dtype=torch.bfloat16)
    warned = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert warned == [
        "bfloat16 is emulated on this CPU (no AVX512-BF16, AVX512-FP16 or AMX), slower than float32; "
        "use --decoder-dtype float32, or the onnxruntime backend"
    ]
