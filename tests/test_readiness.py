"""TensorRT readiness of the exported graphs, and precise refusals of graphs TensorRT cannot build."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from star_deploy.artifacts.manifest import load_manifest
from star_deploy.artifacts.readiness import OPS_TABLE, check_artifacts, check_graph, load_ops_table, release_tables
from star_deploy.core.graphs import GRAPH_NAMES, OPTIONAL_GRAPHS, GraphSpec, TensorSpec

TENSORRT_GRAPHS = GRAPH_NAMES + OPTIONAL_GRAPHS


def readiness_problems(folder) -> dict[str, list[str]]:
    """Problems of every exported graph (TensorRT builds them all, the fast modes' pruned step included)."""
    manifest = load_manifest(folder)
    graphs = manifest.graphs
    reports = check_artifacts(graphs, {g: manifest.path(g) for g in graphs})
    assert [r.graph for r in reports] == list(graphs)
    assert all(sum(r.op_counts.values()) > 0 for r in reports)
    return {r.graph: r.problems for r in reports}


def test_fp32_export_is_ready_for_tensorrt(artifacts_fp32):
    assert readiness_problems(artifacts_fp32) == {g: [] for g in TENSORRT_GRAPHS}


def test_fp16_export_is_ready_for_tensorrt(artifacts_fp16):
    assert readiness_problems(artifacts_fp16) == {g: [] for g in TENSORRT_GRAPHS}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_no_exported_graph_holds_an_integer_pow(precision, artifacts_fp32, artifacts_fp16):
    """TensorRT 10.1 to 10.11 refuse kPOW on integers: a shape product must not export as a power (p * p, p ** 2)."""
    folder = {"fp32": artifacts_fp32, "fp16": artifacts_fp16}[precision]
    manifest = load_manifest(folder)
    assert set(manifest.graphs) == set(TENSORRT_GRAPHS)
    for graph in manifest.graphs:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(manifest.path(graph)), load_external_data=False))
        types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
        types |= {t.name: t.data_type for t in model.graph.initializer}
        pows = [n for n in model.graph.node if n.op_type == "Pow"]
        assert all(types.get(n.input[0]) in (TensorProto.FLOAT, TensorProto.FLOAT16) for n in pows), graph


def test_ops_table_records_its_source_and_our_ops():
    table = load_ops_table()
    data = json.loads(OPS_TABLE.read_text())
    assert "onnx-tensorrt" in data["source"] and "operators.md" in data["source"]
    assert table.tensorrt_version.startswith("10.") and table.opset_min <= 18 <= table.opset_max
    for op in ("LayerNormalization", "InstanceNormalization", "Resize", "MatMul", "ReduceL2", "Softmax"):
        assert table.supports(op)
    for op in ("Det", "BitShift", "SequenceAt", "StringNormalizer"):
        assert not table.supports(op)
    assert "INT64" not in table.operators["MatMul"] and "INT64" in table.operators["Gather"]


def save_graph(tmp_path, nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    return path


def spec(inputs, outputs) -> GraphSpec:
    return GraphSpec("toy", tuple(TensorSpec(*t) for t in inputs), tuple(TensorSpec(*t) for t in outputs))


def test_unsupported_operator_is_named(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])
    path = save_graph(tmp_path, [helper.make_node("Det", ["x"], ["y"], name="det0")], [x], [y])
    report = check_graph(path, spec([("x", ("batch", 3, 3), "float32")], [("y", ("batch",), "float32")]))
    assert report.problems == [
        "g.onnx: node det0: operator Det is not supported by the TensorRT 10.12-10.15 ONNX parser "
        "(see star_deploy/data/trt_onnx_ops.json); re-export without it"
    ]


def test_int64_matmul_is_refused_with_the_type_to_use(tmp_path):
    a = helper.make_tensor_value_info("a", TensorProto.INT64, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", 4])
    w = helper.make_tensor("w", TensorProto.INT64, [4, 4], list(range(16)))
    path = save_graph(tmp_path, [helper.make_node("MatMul", ["a", "w"], ["y"], name="mm")], [a], [y], [w])
    report = check_graph(path, spec([("a", ("batch", 4), "int64")], [("y", ("batch", 4), "int64")]))
    assert len(report.problems) == 1
    assert "node mm (MatMul): tensor 'a' is INT64" in report.problems[0]
    assert "cast it to BF16 or FP16 or FP32" in report.problems[0]


def resize_graph(tmp_path, mode: str):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 8, 8])
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode=mode)
    path = save_graph(tmp_path, [node], [x], [y], [scales])
    return check_graph(path, spec([("x", ("batch", 2, 4, 4), "float32")], [("y", ("batch", 2, 8, 8), "float32")]))


def test_resize_nearest_passes_and_cubic_is_refused(tmp_path):
    assert resize_graph(tmp_path, "nearest").ok
    problems = resize_graph(tmp_path, "cubic").problems
    assert len(problems) == 1 and "node up (Resize): mode='cubic' is not supported by TensorRT" in problems[0]


def test_fixed_dimension_where_the_contract_is_dynamic(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, "tokens"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "tokens"])
    path = save_graph(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [x], [y])
    report = check_graph(path, spec([("x", ("rows", "tokens"), "float32")], [("y", ("rows", "tokens"), "float32")]))
    assert report.problems == [
        "g.onnx: input 'x' axis 0 is fixed to 2 but must follow 'rows' across scales; export it as a dynamic dimension",
        "g.onnx: output 'y' axis 0 is fixed to 2 but must follow 'rows' across scales; export it as a dynamic "
        "dimension",
    ]


def test_custom_domain_and_dynamic_reduce_axes(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])
    nodes = [
        helper.make_node("ReduceL2", ["x", "axes"], ["y"], name="norm"),
        helper.make_node("FancyOp", ["x"], ["z"], name="fancy", domain="com.example"),
    ]
    graph = helper.make_graph(nodes, "g", [x, axes], [y, z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    toy = spec(
        [("x", ("batch", 4), "float32"), ("axes", (1,), "int64")],
        [("y", ("batch", 1), "float32"), ("z", ("batch", 4), "float32")],
    )
    problems = check_graph(path, toy).problems
    assert any("node norm (ReduceL2): input 'axes' (axes) must be a constant" in p for p in problems)
    assert any("com.example::FancyOp is a custom-domain op" in p for p in problems)


@pytest.mark.parametrize("opset, accepted", [(8, False), (9, True), (24, True), (25, False)])
def test_opset_outside_the_parser_range(tmp_path, opset, accepted):
    """The parser's range is 9..24 (star_deploy/data/trt_onnx_ops.json): both ends pass, one past either end fails."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])
    path = save_graph(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [x], [y], opset=opset)
    problems = check_graph(path, spec([("x", ("batch",), "float32")], [("y", ("batch",), "float32")])).problems
    refused = [f"g.onnx: opset {opset} is outside TensorRT 10.12-10.15's range 9..24; export with a supported opset"]
    assert problems == ([] if accepted else refused)


def integer_pow(tmp_path):
    """``side * side`` exported as a power of an INT64 shape value (Shape -> Squeeze -> Pow)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [])
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape", start=0, end=1),
        helper.make_node("Squeeze", ["shape", "axes"], ["side"], name="side"),
        helper.make_node("Pow", ["side", "two"], ["y"], name="square"),
    ]
    constants = [
        helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
        helper.make_tensor("two", TensorProto.INT64, [], [2]),
    ]
    return save_graph(tmp_path, nodes, [x], [y], constants)


def test_support_table_is_per_tensorrt_release(tmp_path):
    """kPOW on integers: refused by TensorRT 10.1 to 10.11 (NvInfer.h), built from 10.12 on."""
    tables = {t.tensorrt_version: t for t in release_tables()}
    assert list(tables) == ["10.1-10.11", "10.12-10.15"]
    assert "INT64" not in tables["10.1-10.11"].operators["Pow"] and "INT64" in tables["10.12-10.15"].operators["Pow"]
    assert load_ops_table(version="10.8.0.43").tensorrt_version == "10.1-10.11"
    assert load_ops_table(version="10.13.3.9").tensorrt_version == "10.12-10.15"
    toy = spec([("x", ("rows", 4), "float32")], [("y", (), "int64")])
    [report] = check_artifacts({"toy": toy}, {"toy": integer_pow(tmp_path)})
    assert len(report.problems) == 1
    assert report.problems[0].startswith("TensorRT 10.1-10.11: g.onnx: node square (Pow): tensor 'side' is INT64")
