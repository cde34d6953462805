"""The benchmark: FLOP counts, the official-style baseline, fidelity measures and the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import GOLDEN, load_golden_model
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from star_deploy.backends.eager_backend import EagerBackend
from star_deploy.bench.flops import StageTotals, decoder_flops, step_flops
from star_deploy.bench.runner import TORCH_GRAPHS, BackendSource, BenchSettings, roofline, run_bench
from star_deploy.bench.traffic import block_weights, generation_bytes, text_weights
from star_deploy.cli import app
from star_deploy.core.config import MAX_TEXT_TOKENS
from star_deploy.core.cpu_isa import ISA_FLAGS, backend_isa, bf16_isa, cpu_flags
from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.evaluation.parity import forced_fidelity, psnr, token_agreement
from star_deploy.runtime.pipeline import ScaleLoop
from star_deploy.runtime.plan import LoadOptions


def test_decoder_flops_match_the_flop_counter(tiny_model):
    config = tiny_model.config
    f_hat = torch.randn(2, config.vae.cvae, config.final_side, config.final_side)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tiny_model.vqvae.decode(f_hat)
    assert counter.get_total_flops() == decoder_flops(config, 2)


def test_step_flops_match_the_flop_counter(torch_pipeline):
    """Projections, FFN and head as counted by torch; attention (fused, uncounted) added analytically."""
    backend, config = torch_pipeline.backend, torch_pipeline.config
    t = config.transformer
    toks = torch_pipeline.tokenizer(["a red car."])
    hidden, pooled = backend.encode_text(toks.input_ids, toks.attention_mask)
    x = backend.begin(hidden, toks.attention_mask, pooled)
    for k in range(3):
        with FlopCounterMode(display=False) as counter:
            backend.step(k, x)
        l, seen = config.patch_nums[k] ** 2, config.scale_offsets()[k] + config.patch_nums[k] ** 2
        attn = 2 * t.depth * (2 * l * 2 * seen * t.width + l * 2 * MAX_TEXT_TOKENS * t.width)
        assert counter.get_total_flops() + attn == step_flops(config, 1, k)
        x = torch.randn(2, config.patch_nums[k + 1] ** 2, t.width)


@pytest.fixture(scope="module")
def eager_pipeline() -> ScaleLoop:
    model = load_golden_model()
    return ScaleLoop(EagerBackend(model), PromptTokenizer(model.tokenizer_dir))


@pytest.mark.parametrize("index", [0, 5])
def test_eager_baseline_reproduces_golden(eager_pipeline, golden, golden_cases, golden_sampling, index):
    case = golden_cases[index]
    gen = eager_pipeline.generate([case["prompt"]], golden_sampling, seeds=[case["seed"]])
    assert np.array_equal(gen.tokens, golden[f"{case['key']}/tokens"])
    assert psnr(gen.images, golden[f"{case['key']}/image"]) >= 80


def test_teacher_forcing_on_own_tokens_draws_them_again(torch_pipeline, golden_sampling):
    """The fidelity measure: forced on its own tokens, a backend draws exactly those tokens."""
    gen = torch_pipeline.generate(["a red car.", "a dog"], golden_sampling, seeds=[3, 4])
    forced = torch_pipeline.generate(["a red car.", "a dog"], golden_sampling, seeds=[3, 4], teacher_tokens=gen.tokens)
    assert forced_fidelity(gen, forced) == {"teacher_forced_token_agreement": 1.0, "image_psnr_db": math.inf}
    other = torch_pipeline.generate(["a red car.", "a dog"], golden_sampling, seeds=[5, 6], teacher_tokens=gen.tokens)
    assert token_agreement(other.sampled, gen.tokens) < 0.5


def test_bench_command_reports_every_backend(artifacts_fp32, tmp_path):
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--weights",
        str(GOLDEN),
        "--resolution",
        "256",
        "--artifacts",
        str(artifacts_fp32),
        "--backends",
        "torch-eager,torch,onnxruntime,onnxruntime-int8,tensorrt",
        "--repeat",
        "1",
        "--json",
        str(out),
        "--sampler",
        "official",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["baseline"] == "torch-eager" and report["floor_s"] > 0 and report["machine"]["cpu_count"]
    eager = report["backends"]["torch-eager"]
    assert eager["vs_baseline"] == pytest.approx(1.0)
    for name in ("torch-eager", "torch", "onnxruntime", "onnxruntime-int8"):
        entry = report["backends"][name]
        assert entry["median_s"] > 0 and entry["p90_s"] >= entry["median_s"] and entry["peak_mem_bytes"] > 0
        assert entry["vs_floor"] > 1 and len(entry["stages"]["steps"]) == 10
        assert set(entry["stages"]) == {"text", "steps", "sampling", "update", "decode"}
    for name in ("torch", "onnxruntime"):
        assert report["backends"][name]["fidelity"]["tokens_equal_fp32"] is True
        assert report["backends"][name]["fidelity"]["teacher_forced_token_agreement"] == 1.0
    assert report["backends"]["onnxruntime-int8"]["fidelity"]["teacher_forced_token_agreement"] >= 0.9
    assert "skipped" in report["backends"]["tensorrt"]


def test_without_the_baseline_fidelity_is_measured_against_a_float32_run(tiny_model):
    """The reference the GPU bench uses (its baseline runs fp16 autocast): a float32 torch generation."""
    settings = BenchSettings(("torch", TORCH_GRAPHS), repeat=1, load=LoadOptions(dtype="bfloat16"))
    report = run_bench(BackendSource(tiny_model, None, None, settings), settings)
    fid = report["backends"]["torch"]["fidelity"]
    assert 0.9 <= fid["teacher_forced_token_agreement"] < 1.0 and fid["image_psnr_db"] > 30
    assert report["backends"][TORCH_GRAPHS] == {"skipped": f"{TORCH_GRAPHS} needs --device cuda"}


def test_weight_bytes_match_the_model(tiny_model):
    """Per scale, the floor's memory term reads every weight matrix of the blocks and the head once."""
    config = tiny_model.config
    blocks = sum(p.numel() for p in tiny_model.transformer.blocks.parameters() if p.dim() == 2)
    head = tiny_model.transformer.head_logits.weight.numel()
    assert block_weights(config) * config.transformer.depth == blocks
    assert generation_bytes(config, 1, 2).steps[0] == 2 * (blocks + head)
    text = sum(p.numel() for n, p in tiny_model.text_encoder.named_parameters() if p.dim() == 2 and "layers" in n)
    assert text_weights(config) == text


def test_roofline_takes_the_binding_roof_per_stage():
    flops = StageTotals(text=20.0, steps=[1.0, 1000.0], update=0.0, decode=50.0)
    traffic = StageTotals(text=1.0, steps=[30.0, 30.0], update=0.0, decode=0.0)
    assert roofline(flops, traffic, flops_per_s=10.0, bytes_per_s=1.0) == 2.0 + 30.0 + 100.0 + 5.0


def test_backend_isa_names_the_instructions():
    avx2, vnni, amx = ["avx2", "fma"], ["avx2", "fma", "avx512f", "avx512_vnni"], ["avx512f", "amx_int8", "amx_bf16"]
    assert backend_isa("int8-dynamic", "float32", avx2) == "AVX2 (no VNNI)"
    assert backend_isa("int8", "float32", vnni) == "AVX512-VNNI"
    assert backend_isa("int8", "float32", amx) == "AMX-INT8"
    assert backend_isa("fp32", "float32", avx2) == "AVX2 FMA fp32"
    assert backend_isa("fp32", "bfloat16", avx2) == "bf16 emulated" and bf16_isa(amx) == "AMX-BF16"
    assert set(cpu_flags()) <= set(ISA_FLAGS)
