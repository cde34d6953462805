"""Tables and kernels stored as int8/int4 (web/table_storage.py): ONNX Runtime dequantizes them as numpy does."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from star_deploy.web.table_storage import TableLayout, dequantize_table, quantize_table, store_tables

LAYOUTS = [TableLayout(8), TableLayout(4), TableLayout(4, 32), TableLayout(4, 16), TableLayout(8, 32)]
TABLE_SHAPE = (1000, 70)
"""Rows of 70 values: blocks of 32 and 16 leave a partial last block."""
KERNEL_SHAPE = (64, 120, 3, 3)
"""120 input channels: blocks of 32 along them leave a partial last block too."""


def table_and_kernel_graph(dtype: np.dtype, opset: int = 18) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A graph that gathers rows of a table and convolves an input with a kernel; the two weights."""
    rng = np.random.default_rng(0)
    table = rng.normal(0, 0.5, TABLE_SHAPE).astype(dtype)
    kernel = rng.normal(0, 0.1, KERNEL_SHAPE).astype(dtype)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["rows"]),
            helper.make_node("Conv", ["image", "kernel"], ["features"], pads=[1, 1, 1, 1]),
        ],
        "tables",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("image", elem, [1, KERNEL_SHAPE[1], 6, 6]),
        ],
        [
            helper.make_tensor_value_info("rows", elem, [None, TABLE_SHAPE[1]]),
            helper.make_tensor_value_info("features", elem, [1, KERNEL_SHAPE[0], 6, 6]),
        ],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(kernel, "kernel")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), table, kernel


def run(model: onnx.ModelProto, ids: np.ndarray, image: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": ids, "image": image})


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: f"int{layout.bits}-block{layout.block_size}")
def test_onnxruntime_dequantizes_stored_tables_and_kernels_as_numpy_does(layout, dtype):
    model, table, kernel = table_and_kernel_graph(dtype)
    assert store_tables(model, {"Gather": layout, "Conv": layout}) == 2
    onnx.checker.check_model(model, full_check=True)
    opset = max(18, layout.opset if dtype == np.float32 else max(layout.opset, 19))
    assert model.opset_import[0].version == opset, "the graph was not converted to the opset the layout needs"
    stored = {i.name: i for i in model.graph.initializer}
    expected_type = TensorProto.INT4 if layout.bits == 4 else TensorProto.INT8
    assert stored[f"table.int{layout.bits}"].data_type == expected_type and "table" not in stored
    ids = np.array([0, 7, 999, 7], dtype=np.int64)
    image = np.random.default_rng(1).normal(size=(1, KERNEL_SHAPE[1], 6, 6)).astype(dtype)
    rows, features = run(model, ids, image)
    q, scale = quantize_table(table, layout)
    assert np.abs(q).max() <= layout.qmax and np.abs(q).max() == layout.qmax
    want_table = dequantize_table(q, scale, layout).astype(dtype)
    np.testing.assert_array_equal(rows, want_table[ids])
    reference = table_and_kernel_graph(dtype)[0]
    kq, kscale = quantize_table(kernel, layout)
    reference.graph.initializer[1].CopyFrom(
        numpy_helper.from_array(dequantize_table(kq, kscale, layout).astype(dtype), "kernel")
    )
    tolerance = 1e-5 if dtype == np.float32 else 2e-2
    np.testing.assert_allclose(features, run(reference, ids, image)[1], rtol=tolerance, atol=tolerance)
    error = np.abs(want_table.astype(np.float32) - table.astype(np.float32)).max()
    assert error <= 0.5 * np.abs(table.astype(np.float32)).max() / layout.qmax * 1.01 + 1e-3


def test_only_large_tables_read_by_gather_or_conv_alone_are_stored():
    model, _, _ = table_and_kernel_graph(np.float32)
    model.graph.node.append(helper.make_node("Identity", ["table"], ["copy"]))
    model.graph.output.append(helper.make_tensor_value_info("copy", TensorProto.FLOAT, list(TABLE_SHAPE)))
    assert store_tables(model, {"Gather": TableLayout(4, 32), "Conv": TableLayout(8)}) == 1
    stored = {i.name: i.data_type for i in model.graph.initializer}
    assert stored["table"] == TensorProto.FLOAT and stored["kernel.int8"] == TensorProto.INT8
    assert model.opset_import[0].version == 18, "an opset 13 per-axis int8 DequantizeLinear needs no conversion"
