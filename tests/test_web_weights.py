"""The browser site at real-size settings, on the golden tiny export: int8/int4 weights, weights in parts, the
download cache, WebGPU (Chromium's SwiftShader adapter) and the refusals of ``web --out``.

Python's side of each comparison runs the site's own graphs (``artifacts_from_site``); fidelity against
fp32 is teacher-forced on the official tokens of the golden cases, against ``THRESHOLDS``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import test_web_site
from typer.testing import CliRunner

from star_deploy import StarPipeline
from star_deploy.artifacts.manifest import load_manifest
from star_deploy.backends.ort_backend import OrtBackend
from star_deploy.cli import app
from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.errors import ConfigError
from star_deploy.evaluation.parity import THRESHOLDS, psnr, token_agreement
from star_deploy.files.images import to_uint8
from star_deploy.runtime.pipeline import ScaleLoop
from star_deploy.web.artifacts import artifacts_from_site
from star_deploy.web.browser import SiteBrowser
from star_deploy.web.server import SiteHandler
from star_deploy.web.site import SITE_MANIFEST, build_site
from star_deploy.web.weights import BITS, BLOCK_SIZES, KERNELS, TABLE_GRAPHS, TABLES, quantization_of, site_precision

dist = test_web_site.dist
check_against_python = test_web_site.check_against_python
needs_chromium = test_web_site.needs_chromium
DECODER_ON_WASM = {"vq_decoder": "wasm"}
"""The VQVAE decoder (float, the same in every site) takes most of a generation on SwiftShader's software
WebGPU; the tests run it there once, on the demo (test_web_site.py), and on WebAssembly elsewhere."""
SMALL_PARTS = 96 * 1024
"""Parts this small split the tiny transformer's weights into several files."""


@pytest.fixture(scope="module")
def sites(artifacts_fp32, dist, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("web-weights")
    built = {w: build_site(artifacts_fp32, root / w, dist, w).out for w in BITS}
    built["parts"] = build_site(artifacts_fp32, root / "parts", dist, "int4", part_bytes=SMALL_PARTS).out
    return built


@pytest.fixture(scope="module")
def site_graphs(sites, tmp_path_factory) -> dict[str, Path]:
    """Each site's graphs as an artefact folder for ONNX Runtime in Python."""
    root = tmp_path_factory.mktemp("web-graphs")
    return {name: artifacts_from_site(site, root / name) for name, site in sites.items()}


def python_image(artifacts: Path, prompt: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    out = StarPipeline.from_pretrained(artifacts)(prompt, seed=seed, output_type="np")
    return out.tokens[0], to_uint8(out.images[0].transpose(2, 0, 1))


def forced_fidelity(artifacts: Path, golden, golden_cases, golden_sampling) -> tuple[float, float]:
    """Teacher-forced on the official (fp32) tokens of every golden case: token agreement and the lowest PSNR."""
    manifest = load_manifest(artifacts)
    loop = ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))
    sampled, reference, psnrs = [], [], []
    for case in golden_cases:
        tokens = golden[f"{case['key']}/tokens"]
        gen = loop.generate([case["prompt"]], golden_sampling, [case["seed"]], teacher_tokens=tokens)
        sampled.append(gen.sampled)
        reference.append(tokens)
        psnrs.append(psnr(gen.images, golden[f"{case['key']}/image"]))
    return token_agreement(np.concatenate(sampled), np.concatenate(reference)), min(psnrs)


@pytest.mark.parametrize("weights", list(BITS))
def test_quantized_site_stores_matmulnbits_and_meets_the_thresholds_against_fp32(
    weights, sites, site_graphs, golden, golden_cases, golden_sampling
):
    data = json.loads((sites[weights] / SITE_MANIFEST).read_text())
    assert data["quantization"]["bits"] == BITS[weights] and data["model"]["precision"] == weights
    manifest = load_manifest(site_graphs[weights])
    for name in ("text_encoder", "text_context", "transformer_step"):
        nodes = [n for n in onnx.load(str(manifest.path(name))).graph.node if n.op_type == "MatMulNBits"]
        blocks = {a.i for n in nodes for a in n.attribute if a.name == "block_size"}
        assert blocks == {BLOCK_SIZES[weights][name]}, f"{name} of the {weights} site: MatMulNBits blocks {blocks}"
    decoder = {n.op_type for n in onnx.load(str(manifest.path("vq_decoder"))).graph.node}
    assert "MatMulNBits" not in decoder
    stored_as = {"text_encoder": TABLES[weights].bits, "vq_decoder": KERNELS.bits}
    for name in TABLE_GRAPHS:
        graph = onnx.load(str(manifest.path(name))).graph
        kind = onnx.TensorProto.INT4 if stored_as[name] == 4 else onnx.TensorProto.INT8
        tables = [i for i in graph.initializer if i.data_type == kind]
        assert "DequantizeLinear" in {n.op_type for n in graph.node} and tables, f"{name}: not int{stored_as[name]}"
    agreement, lowest = forced_fidelity(site_graphs[weights], golden, golden_cases, golden_sampling)
    limits = THRESHOLDS[weights]
    assert agreement >= limits.teacher_forced_token_agreement, f"{weights}: agreement {agreement:.4f}"
    assert lowest >= limits.teacher_forced_psnr_db, f"{weights}: PSNR {lowest:.1f} dB"


@needs_chromium
@pytest.mark.parametrize("weights", list(BITS))
def test_quantized_site_draws_pythons_tokens_on_webassembly_and_webgpu(weights, sites, site_graphs, golden_cases):
    prompt, seed = golden_cases[0]["prompt"], golden_cases[0]["seed"]
    reference = python_image(site_graphs[weights], prompt, seed)
    for webgpu in (False, True):
        with SiteBrowser(sites[weights], webgpu=webgpu) as browser:
            page = browser.open()
            assert page.state == "ready", page.message
            assert browser.driver.execute_script("return window.star.provider") == ("webgpu" if webgpu else "wasm")
            if webgpu:
                page = browser.load(graphProviders=DECODER_ON_WASM)
                assert page.state == "ready", page.message
            result = browser.generate(prompt, seed)
        check_against_python(result, reference, (weights, "webgpu" if webgpu else "wasm"))


class CountingHandler(SiteHandler):
    """The site server, recording every path it is asked for."""

    requests: list[str] = []

    def do_GET(self) -> None:
        CountingHandler.requests.append(self.path)
        super().do_GET()


@needs_chromium
def test_weights_in_parts_load_are_verified_and_cached(
    sites, site_graphs, golden_cases, artifacts_fp32, dist, tmp_path
):
    data = json.loads((sites["parts"] / SITE_MANIFEST).read_text())
    parts = data["graphs"]["transformer_step"]["data"]
    assert len(parts) >= 3, "the tiny transformer should be split into several weight files"
    assert all((sites["parts"] / p["file"]).stat().st_size <= SMALL_PARTS for p in parts)
    prompt, seed = golden_cases[1]["prompt"], golden_cases[1]["seed"]
    single = python_image(site_graphs["int4"], prompt, seed)
    site = Path(shutil.copytree(sites["parts"], tmp_path / "site"))
    CountingHandler.requests = []
    with SiteBrowser(site, CountingHandler) as browser:
        first = browser.open()
        assert first.state == "ready", first.message
        check_against_python(browser.generate(prompt, seed), single, "weights in parts")
        assert any(p.startswith("/graphs/") for p in CountingHandler.requests)
        CountingHandler.requests = []
        second = browser.open()
        assert second.state == "ready", second.message
        assert not [p for p in CountingHandler.requests if p.startswith("/graphs/")], "a second visit downloads"
        cached = browser.driver.execute_script(
            "return [...document.querySelectorAll('#files li')].map(r => r.dataset.source)"
        )
        assert cached and set(cached) == {"cache"}
        check_against_python(browser.generate(prompt, seed), single, "from the cache")
        build_site(artifacts_fp32, site, dist, "int8", overwrite=True, part_bytes=SMALL_PARTS)
        CountingHandler.requests = []
        changed = browser.open()
        assert changed.state == "ready", changed.message
        assert any(p.startswith("/graphs/") for p in CountingHandler.requests), "a changed file is fetched again"
    damaged = Path(shutil.copytree(sites["parts"], tmp_path / "damaged"))
    part = damaged / parts[1]["file"]
    part.write_bytes(part.read_bytes()[:-1] + bytes([part.read_bytes()[-1] ^ 1]))
    with SiteBrowser(damaged) as browser:
        page = browser.open()
    assert page.state == "error" and f"{parts[1]['file']} does not match site.json" in page.message


def test_web_refuses_the_current_folder_its_parents_home_and_the_inputs(artifacts_fp32, dist, tmp_path, monkeypatch):
    here = tmp_path / "work" / "here"
    here.mkdir(parents=True)
    (here / "keep.txt").write_text("mine")
    monkeypatch.chdir(here)
    runner = CliRunner()
    outs = [".", "..", "./", "../here", str(here), str(here.parent), "/", str(Path.home()), os.path.relpath("/", here)]
    outs += [str(artifacts_fp32), str(artifacts_fp32 / "sub"), str(artifacts_fp32.parent), str(dist)]
    for out in outs:
        args = ["web", str(artifacts_fp32), "--out", out, "--ort-web", str(dist), "--weights", "fp32", "--overwrite"]
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (out, result.output)
        assert result.output.startswith(f"error: --out {Path(out)}:") and "unexpected" not in result.output, (
            result.output
        )
    assert (here / "keep.txt").read_text() == "mine" and sorted(os.listdir(here)) == ["keep.txt"]


def test_weight_storage_without_onnx_names_the_web_extra(artifacts_fp32, dist, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    for weights in ("fp16", "int8", "int4"):
        result = CliRunner().invoke(
            app,
            [
                "web",
                str(artifacts_fp32),
                "--out",
                str(tmp_path / weights),
                "--ort-web",
                str(dist),
                "--weights",
                weights,
            ],
        )
        assert result.exit_code == 2 and "pip install 'star-deploy[web]'" in result.output, result.output
        assert not (tmp_path / weights).exists()
    fp32 = ["web", str(artifacts_fp32), "--out", str(tmp_path / "fp32"), "--ort-web", str(dist), "--weights", "fp32"]
    assert CliRunner().invoke(app, fp32).exit_code == 0


@needs_chromium
def test_int4_site_of_an_fp16_export_keeps_float16_io_and_draws_pythons_tokens(artifacts_fp16, dist, tmp_path):
    """4-bit weights with float16 activations and K/V (what a 1024-px d30 site needs), on WebAssembly."""
    site = build_site(artifacts_fp16, tmp_path / "site", dist, "int4").out
    data = json.loads((site / SITE_MANIFEST).read_text())
    assert data["model"]["precision"] == "fp16" and data["quantization"]["bits"] == 4
    graphs = artifacts_from_site(site, tmp_path / "graphs")
    step = onnx.load(str(load_manifest(graphs).path("transformer_step"))).graph
    inputs = {i.name: i.type.tensor_type.elem_type for i in step.input}
    nbits = [n for n in step.node if n.op_type == "MatMulNBits"]
    assert nbits and inputs["x"] == onnx.TensorProto.FLOAT16, "the step should take float16 and hold MatMulNBits"
    prompt, seed = "a photo of a cat", 0  # "a red car." seed 3 differs in 5 of 680 tokens: docs/web.md
    reference = python_image(graphs, prompt, seed)
    with SiteBrowser(site) as browser:
        page = browser.open()
        assert page.state == "ready", page.message
        assert browser.driver.execute_script("return window.star.provider") == "wasm"
        result = browser.generate(prompt, seed)
    check_against_python(result, reference, "int4 weights, fp16 export")


@pytest.mark.parametrize("precision", ["int8", "int4", "int8-dynamic"])
def test_quantized_weights_refuse_an_already_quantized_export(precision):
    with pytest.raises(ConfigError, match=f"this one is {precision}: pass a folder from `star-deploy export`"):
        quantization_of("int4", precision)
    assert quantization_of("int4", "fp16").block_sizes == BLOCK_SIZES["int4"]
    assert site_precision("fp16", "int4") == "fp16" and site_precision("fp32", "int4") == "int4"
