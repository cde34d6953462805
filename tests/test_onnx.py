"""ONNX export and the ONNX Runtime backend: graph validity, per-graph parity, golden parity."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from conftest import max_err
from star_deploy.export.manifest import MANIFEST, load_manifest
from star_deploy.graphs import graph_specs, scale_dims
from star_deploy.model.tables import build_scale_tables

STEP_TOL = 1e-4
TEXT_TOL = 1e-5
IMAGE_TOL = 1e-4


def test_every_graph_passes_the_checker(artifacts_fp32):
    manifest = load_manifest(artifacts_fp32)
    for name in manifest.graphs:
        onnx.checker.check_model(str(manifest.path(name)), full_check=True)


def test_graph_io_names_follow_the_spec(artifacts_fp32):
    manifest = load_manifest(artifacts_fp32)
    for name, spec in manifest.graphs.items():
        model = onnx.load(str(manifest.path(name)), load_external_data=False)
        assert [i.name for i in model.graph.input] == spec.input_names
        assert [o.name for o in model.graph.output] == spec.output_names


def test_step_and_update_match_torch_at_every_scale(torch_pipeline, ort_pipeline):
    """Same inputs into both backends, scale by scale: logits, new K/V, f_hat and next input."""
    tb, ob = torch_pipeline.backend, ort_pipeline.backend
    toks = torch_pipeline.tokenizer(["a red car.", "A cute dog"])
    hidden, pooled = tb.encode_text(toks.input_ids, toks.attention_mask)
    o_hidden, o_pooled = ob.encode_text(toks.input_ids, toks.attention_mask)
    assert max_err(hidden, o_hidden) <= TEXT_TOL and max_err(pooled, o_pooled) <= TEXT_TOL
    x = tb.begin(hidden[:2], toks.attention_mask[:2], pooled)
    assert max_err(x, ob.begin(hidden[:2], toks.attention_mask[:2], pooled)) <= STEP_TOL
    config = tb.config
    f_hat = torch.zeros(2, config.vae.cvae, config.final_side, config.final_side)
    gen = torch.Generator().manual_seed(0)
    for k, (side, tables) in enumerate(zip(config.patch_nums, build_scale_tables(config))):
        logits_t, logits_o = tb.step(k, x, tables), ob.step(k, x, tables)
        assert max_err(logits_t, logits_o) <= STEP_TOL, f"logits at scale {k}"
        end = tb.cache.length
        for a, b in zip(tb.cache.keys + tb.cache.values, ob.cache.keys + ob.cache.values):
            assert max_err(a[:end], b[:end]) <= STEP_TOL, f"K/V at scale {k}"
        tokens = torch.randint(0, config.transformer.vocab_size, (2, side, side), generator=gen)
        f_t, x_t = tb.update(k, tokens, f_hat, tables)
        f_o, x_o = ob.update(k, tokens, f_hat, tables)
        assert max_err(f_t, f_o) <= STEP_TOL and max_err(x_t, x_o) <= STEP_TOL, f"update at scale {k}"
        f_hat, x = f_t, x_t
    assert max_err(tb.decode(f_hat), ob.decode(f_hat)) <= IMAGE_TOL


@pytest.mark.parametrize("index", [0, 3, 4])
def test_onnxruntime_reproduces_golden(ort_pipeline, golden, golden_cases, golden_sampling, index):
    case = golden_cases[index]
    gen = ort_pipeline.generate([case["prompt"]], golden_sampling, seeds=[case["seed"]])
    assert torch.equal(gen.tokens, torch.from_numpy(golden[f"{case['key']}/tokens"]))
    assert max_err(gen.images, golden[f"{case['key']}/image"]) <= IMAGE_TOL


def test_onnxruntime_batched_equals_one_by_one(ort_pipeline, golden_sampling):
    prompts = ["a red car.", "A cute dog sitting on the grass, high quality"]
    batched = ort_pipeline.generate(prompts, golden_sampling, seeds=[3, 4])
    for i, seed in enumerate([3, 4]):
        single = ort_pipeline.generate([prompts[i]], golden_sampling, seeds=[seed])
        assert torch.equal(batched.tokens[i], single.tokens[0])


def test_manifest_describes_the_graphs(artifacts_fp32, tiny_model):
    data = json.loads((artifacts_fp32 / MANIFEST).read_text())
    specs = graph_specs(tiny_model.config, "fp32")
    assert data["precision"] == "fp32"
    assert set(data["graphs"]) == set(specs)
    assert data["graphs"]["transformer_step"]["inputs"][-1]["shape"] == ["past", "rows", 2, 64]
    assert set(data["sources"]) == {"clip", "vae", "star"}
    assert all(len(s["sha256"]) == 64 for s in data["sources"].values())
    assert scale_dims(tiny_model.config, 1, 9)["past"] == 424


def test_export_is_deterministic(artifacts_fp32, tiny_model, tmp_path):
    from star_deploy.export.artifacts import export_artifacts

    again = export_artifacts(tiny_model, tmp_path / "again", "fp32")
    assert (again / MANIFEST).read_text() == (artifacts_fp32 / MANIFEST).read_text()


def test_export_refuses_existing_output(tiny_model, artifacts_fp32):
    from star_deploy.errors import StarDeployError
    from star_deploy.export.artifacts import export_artifacts

    with pytest.raises(StarDeployError, match="--overwrite"):
        export_artifacts(tiny_model, artifacts_fp32, "fp32")


def test_large_graphs_use_external_data(tiny_model, tmp_path, golden, golden_sampling):
    """With the size limit lowered, weights move to .onnx.data; the graphs still run and verify."""
    from star_deploy.backends.ort_backend import OrtBackend
    from star_deploy.export.artifacts import export_artifacts
    from star_deploy.export.manifest import verify_graph_hashes
    from star_deploy.model.text import PromptTokenizer
    from star_deploy.pipeline import ScaleLoop

    out = export_artifacts(tiny_model, tmp_path / "ext", "fp32", external_bytes=0)
    assert (out / "transformer_step.onnx.data").is_file()
    manifest = load_manifest(out)
    verify_graph_hashes(manifest)
    pipeline = ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))
    gen = pipeline.generate(["a red car."], golden_sampling, seeds=[1])
    assert torch.equal(gen.tokens, torch.from_numpy(golden["p0_s1/tokens"]))
    (out / "transformer_step.onnx.data").write_bytes(b"corrupt")
    with pytest.raises(Exception, match="sha256 mismatch"):
        verify_graph_hashes(manifest)
