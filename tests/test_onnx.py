"""ONNX export and the ONNX Runtime backend: graph validity, per-graph parity, golden parity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import max_err

from star_deploy.artifacts.manifest import MANIFEST, load_manifest
from star_deploy.core.graphs import graph_specs, scale_dims
from star_deploy.evaluation.parity import graph_parity

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


GRAPH_TOLERANCES = {
    "text_encoder": TEXT_TOL,
    "text_context": STEP_TOL,
    "transformer_step": STEP_TOL,
    "kv_cache": STEP_TOL,
    "scale_update": STEP_TOL,
    "vq_decoder": IMAGE_TOL,
}


def test_every_graph_matches_torch_at_every_scale(torch_pipeline, ort_pipeline):
    """Same inputs into both backends, scale by scale: logits, new K/V, f_hat, next input, image."""
    stats = graph_parity(
        torch_pipeline.backend, ort_pipeline.backend, torch_pipeline.tokenizer, ["a red car.", "A cute dog"]
    )
    for name, tol in GRAPH_TOLERANCES.items():
        assert stats[name].count > 0 and stats[name].max_abs <= tol, (name, stats[name])


@pytest.mark.parametrize("index", [0, 3, 4])
def test_onnxruntime_reproduces_golden(ort_pipeline, golden, golden_cases, golden_sampling, index):
    case = golden_cases[index]
    gen = ort_pipeline.generate([case["prompt"]], golden_sampling, seeds=[case["seed"]])
    assert np.array_equal(gen.tokens, golden[f"{case['key']}/tokens"])
    assert max_err(gen.images, golden[f"{case['key']}/image"]) <= IMAGE_TOL


def test_onnxruntime_batched_equals_one_by_one(ort_pipeline, golden_sampling):
    prompts = ["a red car.", "A cute dog sitting on the grass, high quality"]
    batched = ort_pipeline.generate(prompts, golden_sampling, seeds=[3, 4])
    for i, seed in enumerate([3, 4]):
        single = ort_pipeline.generate([prompts[i]], golden_sampling, seeds=[seed])
        assert np.array_equal(batched.tokens[i], single.tokens[0])


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
    from star_deploy.artifacts.manifest import verify_graph_hashes
    from star_deploy.backends.ort_backend import OrtBackend
    from star_deploy.core.tokenizer import PromptTokenizer
    from star_deploy.errors import ArtifactError
    from star_deploy.export.artifacts import export_artifacts
    from star_deploy.runtime.pipeline import ScaleLoop

    out = export_artifacts(tiny_model, tmp_path / "ext", "fp32", external_bytes=0)
    assert (out / "transformer_step.onnx.data").is_file()
    manifest = load_manifest(out)
    verify_graph_hashes(manifest)
    pipeline = ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))
    gen = pipeline.generate(["a red car."], golden_sampling, seeds=[1])
    assert np.array_equal(gen.tokens, golden["p0_s1/tokens"])
    (out / "transformer_step.onnx.data").write_bytes(b"corrupt")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        verify_graph_hashes(manifest)
