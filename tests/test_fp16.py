"""FP16 graphs (strongly typed: fp32 islands) against the fp32 reference, on ONNX Runtime CPU.

ONNX Runtime's CPU provider runs fp16 nodes through fp16-rounded inputs and outputs, so
these thresholds hold fp16 storage and rounding to account on any machine.
"""

from __future__ import annotations

import onnx
import pytest

from star_deploy.artifacts.manifest import load_manifest
from star_deploy.core.config import SamplingConfig
from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.evaluation.parity import TEST_TOLERANCES, THRESHOLDS, failures, fidelity, graph_parity
from star_deploy.runtime.pipeline import ScaleLoop

PROMPTS = ["a red car.", "A cute dog sitting on the grass, high quality", ""]
GRAPH_MAX_ERR = {
    "text_encoder": 1e-5,
    "text_context": 5e-3,
    "transformer_step": 1e-2,
    "kv_cache": 1e-2,
    "scale_update": 5e-2,
    "vq_decoder": 1e-2,
}
"""Largest absolute error per graph, about three times what ONNX Runtime's CPU provider measures (text encoder 1.3e-6,
text context 1.6e-3, step 2.4e-3, KV cache 2.6e-3, scale update 1.4e-2, decoder 3.7e-3): a tenfold regression fails."""
FP32_ISLANDS = {
    "transformer_step": {"LayerNormalization": (3, 1), "ReduceL2": (2, 0), "Softmax": (2, 0)},
    "text_context": {"ReduceL2": (1, 0)},
    "vq_decoder": {"InstanceNormalization": None, "Softmax": None},
}
"""Ops that must read float32 tensors in an fp16 export, by graph, with their count as (per block, extra):
LayerNorm 3 per block + the head's; QK L2-norm of self-attention q and k (one node), cross-attention q, text keys;
softmax of self- and cross-attention. None: at least one (the decoder's GroupNorm and attention)."""


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


def typed_graph(path) -> tuple[onnx.GraphProto, dict[str, int]]:
    """The graph with shape inference run, and the element type of every named tensor."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    return graph, types | {i.name: i.data_type for i in graph.initializer}


def data_types(node: onnx.NodeProto, types: dict[str, int]) -> set[str]:
    """Element types of the node's non-integer inputs (integer inputs are axes and shapes)."""
    names = {onnx.TensorProto.DataType.Name(types[i]) for i in node.input if i}
    return names - {"INT64", "INT32"}


@pytest.mark.parametrize("graph_name", list(FP32_ISLANDS))
def test_fp32_islands_run_on_fp32_inputs(artifacts_fp16, graph_name):
    """LayerNorm statistics, QK L2-norm, softmax and GroupNorm nodes read float32 tensors in the fp16 export."""
    manifest = load_manifest(artifacts_fp16)
    graph, types = typed_graph(manifest.path(graph_name))
    depth = manifest.config.transformer.depth
    for op, count in FP32_ISLANDS[graph_name].items():
        nodes = [n for n in graph.node if n.op_type == op]
        expected = count[0] * depth + count[1] if count else max(len(nodes), 1)
        assert len(nodes) == expected, f"{graph_name}: {len(nodes)} {op} nodes, expected {expected}"
        assert all(data_types(n, types) == {"FLOAT"} for n in nodes), [(n.name, data_types(n, types)) for n in nodes]


def products(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    """The Mul nodes reading ``tensor`` or a tensor made from it (the full-width RoPE factors)."""
    found = []
    for node in graph.node:
        if tensor in node.input:
            found += [node] if node.op_type == "Mul" else [m for o in node.output for m in products(graph, o)]
    return found


def test_fp16_step_rope_and_logits_head_run_in_fp32(artifacts_fp16):
    """Every RoPE product (q and k together, per block) reads rope_cos/rope_sin in float32; the logits head
    (LayerNorm, MatMul, bias) is float32."""
    manifest = load_manifest(artifacts_fp16)
    graph, types = typed_graph(manifest.path("transformer_step"))
    depth = manifest.config.transformer.depth
    for table in ("rope_cos", "rope_sin"):
        uses = list({n.name: n for n in products(graph, table)}.values())
        assert len(uses) == depth, [n.name for n in uses]
        assert all(data_types(n, types) == {"FLOAT"} for n in uses)
    producer = {o: n for n in graph.node for o in n.output}
    head, name = [], "logits"
    while name in producer and len(head) < 3:
        head.append(producer[name])
        name = next(i for i in head[-1].input if i in producer)
    assert [n.op_type for n in head] == ["Add", "MatMul", "LayerNormalization"]
    assert all(data_types(n, types) == {"FLOAT"} for n in head)


def test_fp16_graphs_close_to_reference(torch_pipeline, fp16_pipeline):
    """Every graph compared (none skipped) within its measured-error bound."""
    stats = graph_parity(torch_pipeline.backend, fp16_pipeline.backend, torch_pipeline.tokenizer, PROMPTS[:2])
    assert set(stats) == set(GRAPH_MAX_ERR)
    for name, limit in GRAPH_MAX_ERR.items():
        assert stats[name].count > 0, f"{name}: nothing was compared"
        assert stats[name].max_abs <= limit, f"{name}: {stats[name].max_abs} > {limit}"


def test_fp16_fidelity_meets_thresholds(torch_pipeline, fp16_pipeline):
    """The user-facing thresholds, and the test tolerance a few times the error ONNX Runtime fp16 measures."""
    result = fidelity(torch_pipeline, fp16_pipeline, PROMPTS, SamplingConfig(cfg=4.0, top_k=50, top_p=0.8), [1, 2, 3])
    assert failures(result, THRESHOLDS["fp16"]) == []
    assert failures(result, TEST_TOLERANCES[("onnxruntime-cpu", "fp16")]) == []


def test_fp32_artifacts_meet_fp32_thresholds(torch_pipeline, ort_pipeline):
    result = fidelity(torch_pipeline, ort_pipeline, PROMPTS[:2], SamplingConfig(cfg=4.0, top_k=50, top_p=0.8), [5, 6])
    assert failures(result, THRESHOLDS["fp32"]) == []
    assert failures(result, TEST_TOLERANCES[("onnxruntime-cpu", "fp32")]) == []
    assert result.free_run_token_agreement == 1.0
