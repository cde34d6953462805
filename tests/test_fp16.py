"""FP16 graphs (strongly typed: fp32 islands) against the fp32 reference, on ONNX Runtime CPU.

ONNX Runtime's CPU provider runs fp16 nodes through fp16-rounded inputs and outputs, so
these thresholds hold fp16 storage and rounding to account on any machine.
"""

from __future__ import annotations

import onnx
import pytest

from star_deploy.commands.parity import THRESHOLDS, failures
from star_deploy.config import SamplingConfig
from star_deploy.export.manifest import load_manifest
from star_deploy.model.text import PromptTokenizer
from star_deploy.parity import fidelity, graph_parity
from star_deploy.pipeline import ScaleLoop

PROMPTS = ["a red car.", "A cute dog sitting on the grass, high quality", ""]
GRAPH_MAX_ERR = {"text_encoder": 1e-5, "transformer_step": 1e-2, "kv_cache": 1e-2, "scale_update": 5e-2, "vq_decoder": 1e-2}
FP32_ISLANDS = {"LayerNormalization", "ReduceL2", "Softmax", "InstanceNormalization"}


@pytest.fixture(scope="module")
def fp16_pipeline(artifacts_fp16) -> ScaleLoop:
    from star_deploy.backends.ort_backend import OrtBackend

    manifest = load_manifest(artifacts_fp16)
    return ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))


def test_fp16_step_graph_is_strongly_typed(artifacts_fp16):
    """Weights of matmuls are fp16; the logits head stays fp32."""
    manifest = load_manifest(artifacts_fp16)
    model = onnx.load(str(manifest.path("transformer_step")))
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert any(t == onnx.TensorProto.FLOAT16 for t in types.values())
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outputs["logits"] == onnx.TensorProto.FLOAT
    assert outputs["new_key.0"] == onnx.TensorProto.FLOAT16


def test_fp16_graphs_close_to_reference(torch_pipeline, fp16_pipeline):
    stats = graph_parity(torch_pipeline.backend, fp16_pipeline.backend, torch_pipeline.tokenizer, PROMPTS[:2])
    for name, limit in GRAPH_MAX_ERR.items():
        assert stats[name].max_abs <= limit, f"{name}: {stats[name].max_abs} > {limit}"


def test_fp16_fidelity_meets_thresholds(torch_pipeline, fp16_pipeline):
    result = fidelity(torch_pipeline, fp16_pipeline, PROMPTS, SamplingConfig(cfg=4.0, top_k=50, top_p=0.8), [1, 2, 3])
    assert failures(result, THRESHOLDS["fp16"]) == []
    assert result.teacher_forced_token_agreement >= 0.99


def test_fp32_artifacts_meet_fp32_thresholds(torch_pipeline, ort_pipeline):
    result = fidelity(torch_pipeline, ort_pipeline, PROMPTS[:2], SamplingConfig(cfg=4.0, top_k=50, top_p=0.8), [5, 6])
    assert failures(result, THRESHOLDS["fp32"]) == []
    assert result.free_run_token_agreement == 1.0
