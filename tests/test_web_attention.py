"""The step's self-attention in query pieces (web/attention_chunks.py) and the browser GPU memory (web/gpu_memory.py).

The rewrite is checked on the golden tiny export's step graph (pieces of 32 queries: 8 at its last scale, empty
ones at the first) against the exported graph on ONNX Runtime, on a float16 chain with casts, and in Chromium on
WebAssembly and WebGPU (SwiftShader) against Python's tokens on the exported graphs. The memory figures are
literal bytes of the 1024-d30 preset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import test_web_site
from onnx import TensorProto, helper
from test_web_weights import DECODER_ON_WASM, python_image
from typer.testing import CliRunner

from star_deploy.artifacts.loadable import read_onnx
from star_deploy.artifacts.manifest import load_manifest
from star_deploy.cli import app
from star_deploy.core.config import preset
from star_deploy.web.attention_chunks import chunk_attention, self_attention_chains
from star_deploy.web.browser import SiteBrowser
from star_deploy.web.gpu_memory import WeightCounts, gpu_memory, weight_counts
from star_deploy.web.site import ATTENTION_CHUNK, SITE_MANIFEST, build_site

dist = test_web_site.dist
CHUNK = 32
"""Queries per piece in these tests: the golden model's last scale (256 queries) in 8 pieces."""
D30 = preset("1024-d30")
D30_COUNTS = WeightCounts(
    {"text_encoder": 289_406_976, "text_context": 119_930_880, "transformer_step": 1_548_288_000},
    {"text_encoder": 50_672_640, "vq_decoder": 64_542_720},
    9_194_635,
)


@pytest.fixture(scope="module")
def step(artifacts_fp32) -> onnx.ModelProto:
    return read_onnx(load_manifest(artifacts_fp32).path("transformer_step"))


def step_feeds(model: onnx.ModelProto, queries: int, past: int) -> dict[str, np.ndarray]:
    """Seeded random inputs of the step at a scale of ``queries`` tokens after ``past`` cached ones."""
    rng = np.random.default_rng(queries)
    dims = {"rows": 2, "batch": 1, "tokens": queries, "past": past, "text_len": 5}
    feeds = {}
    for i in model.graph.input:
        shape = [d.dim_value or dims.get(d.dim_param, 1) for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_pieces_of_the_step_give_the_exported_graphs_outputs_with_the_same_io(step):
    chunked = onnx.ModelProto()
    chunked.CopyFrom(step)
    depth = len(self_attention_chains(step.graph))
    assert depth == 2, "one self-attention per block of the golden model"
    assert chunk_attention(chunked, CHUNK, 256) == depth
    onnx.checker.check_model(chunked)
    assert chunked.graph.input == step.graph.input and chunked.graph.output == step.graph.output
    producer = {o: n for n in chunked.graph.node for o in n.output}
    pieces = self_attention_chains(chunked.graph)
    assert len(pieces) == depth * 256 // CHUNK
    assert all(producer[p.query].op_type == "Slice" for p in pieces), "every self-attention reads a piece"
    for queries, past in ((256, 424), (100, 324), (1, 0)):
        feeds = step_feeds(step, queries, past)
        for want, got in zip(run(step, feeds), run(chunked, feeds), strict=True):
            np.testing.assert_array_equal(got, want, err_msg=f"{queries} queries after {past}")


def test_a_scale_one_piece_covers_is_left_as_exported(step):
    unchanged = onnx.ModelProto()
    unchanged.CopyFrom(step)
    assert chunk_attention(unchanged, 256, 256) == 0
    assert unchanged == step


def test_a_float16_chain_with_casts_is_cut_into_pieces():
    """An fp16 export's attention: MatMul -> Cast(float) -> Softmax -> Cast(float16) -> MatMul."""
    h16 = TensorProto.FLOAT16
    nodes = [
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.FLOAT),
        helper.make_node("Softmax", ["s32"], ["p32"], axis=-1),
        helper.make_node("Cast", ["p32"], ["p"], to=h16),
        helper.make_node("MatMul", ["p", "v"], ["out"]),
    ]
    inputs = [
        helper.make_tensor_value_info("q", h16, [2, 3, "l", 8]),
        helper.make_tensor_value_info("kt", h16, [2, 3, 8, "t"]),
        helper.make_tensor_value_info("v", h16, [2, 3, "t", 8]),
    ]
    graph = helper.make_graph(nodes, "attention", inputs, [helper.make_tensor_value_info("out", h16, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    chunked = onnx.ModelProto()
    chunked.CopyFrom(model)
    assert chunk_attention(chunked, 4, 10) == 1
    assert sum(n.op_type == "Softmax" for n in chunked.graph.node) == 3
    rng = np.random.default_rng(0)
    for queries in (10, 3):
        feeds = {
            "q": rng.standard_normal((2, 3, queries, 8)).astype(np.float16),
            "kt": rng.standard_normal((2, 3, 8, 14)).astype(np.float16),
            "v": rng.standard_normal((2, 3, 14, 8)).astype(np.float16),
        }
        np.testing.assert_array_equal(run(chunked, feeds)[0], run(model, feeds)[0])


@pytest.fixture(scope="module")
def chunked_site(artifacts_fp32, dist, tmp_path_factory) -> Path:
    return build_site(
        artifacts_fp32, tmp_path_factory.mktemp("web-attention") / "site", dist, "fp32", attention_chunk=CHUNK
    ).out


def test_a_chunked_site_records_its_pieces(chunked_site):
    data = json.loads((chunked_site / SITE_MANIFEST).read_text())
    assert data["attention"] == {"query_chunk": CHUNK, "chunks": 8, "graphs": ["transformer_step"]}


@test_web_site.needs_chromium
def test_a_chunked_site_draws_pythons_tokens_on_webassembly_and_webgpu(chunked_site, artifacts_fp32, golden_cases):
    """Python runs the exported (unchunked) graphs: the pieces change no token and no pixel."""
    prompt, seed = golden_cases[0]["prompt"], golden_cases[0]["seed"]
    reference = python_image(artifacts_fp32, prompt, seed)
    for webgpu in (False, True):
        with SiteBrowser(chunked_site, webgpu=webgpu) as browser:
            page = browser.open()
            assert page.state == "ready", page.message
            if webgpu:
                page = browser.load(graphProviders=DECODER_ON_WASM)
                assert page.state == "ready", page.message
                assert browser.driver.execute_script("return window.star.providers.transformer_step") == "webgpu"
            result = browser.generate(prompt, seed)
        test_web_site.check_against_python(result, reference, ("chunked", "webgpu" if webgpu else "wasm"))


def test_weight_counts_of_1024_d30():
    assert weight_counts(D30) == D30_COUNTS


def test_gpu_memory_of_1024_d30_int4_in_literal_bytes():
    whole = gpu_memory(D30, "int4", "fp32", None, D30_COUNTS)
    assert whole.kv_cache == 8_710_041_600  # 9451 tokens x 2 rows x 1920 x 30 layers x K, V x 4 B
    assert whole.largest_buffer == 9_290_711_040  # (2, 30, 4096, 9451) float32 scores
    assert not whole.buffer_fits(4 << 30)
    pieces = gpu_memory(D30, "int4", "fp16", ATTENTION_CHUNK, D30_COUNTS)
    # 4 bit + one float16 scale per block (text graphs 256, step 32), CLIP's embeddings int4 in blocks of 32,
    # the decoder's kernels int8, 9194635 other values x 2 B
    text = 144_703_488 + 2_260_992 + 59_965_440 + 936_960
    assert pieces.weights == text + 774_144_000 + 96_768_000 + 25_336_320 + 3_167_040 + 64_542_720 + 18_389_270
    assert pieces.kv_cache == 4_355_020_800
    assert pieces.largest_buffer == 580_669_440 and pieces.largest_buffer_is == "attention scores"
    assert pieces.attention == 2 * 580_669_440 + 2 * 72_583_680
    assert pieces.decoder == 10 * 160 * 1024 * 1024 * 2 and pieces.dequantized == 64_542_720 * 2
    assert pieces.activation == pieces.decoder + pieces.dequantized
    assert pieces.total == 9_029_763_670 and pieces.buffer_fits(2 << 30)


def test_web_gpu_memory_prints_the_1024_d30_table():
    result = CliRunner().invoke(app, ["web", "--gpu-memory", "1024-d30", "--weights", "int4"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-1].split() == ["fp16", "pieces", "of", "256", "queries", "1.19G", "4.36G", "3.48G", "9.03G"] + [
        "0.58G",
        "attention",
        "scores",
        "yes",
        "yes",
        "yes",
    ]
    bad = CliRunner().invoke(app, ["web", "--gpu-memory", "2048-d30"])
    assert bad.exit_code == 2 and "unknown preset '2048-d30'" in bad.output
