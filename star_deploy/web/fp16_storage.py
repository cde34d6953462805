"""Graphs with their large float32 weights stored as float16 and cast back on load: half the download, fp32 math.

Each converted initializer ``W`` becomes ``W.fp16`` plus a ``Cast(to=float32)`` node producing
``W``: the graph's inputs, outputs and arithmetic stay float32, and ONNX Runtime folds the
casts once when it loads the graph. Only tensors whose values fit float16 (finite, at most
65504 in magnitude) are converted, so masks such as -1e9 keep their meaning.
"""

from __future__ import annotations

import numpy as np

FP16_MAX = 65504.0
MIN_ELEMENTS = 1024
"""Smaller tensors stay float32: they cost little to download."""


def _convertible(array: np.ndarray) -> bool:
    return (
        array.dtype == np.float32
        and array.size >= MIN_ELEMENTS
        and bool(np.isfinite(array).all())
        and float(np.abs(array).max(initial=0.0)) <= FP16_MAX
    )


def store_fp16(model) -> int:
    """Store ``model``'s (an onnx ModelProto, changed in place) large float32 initializers as float16; how many."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    kept, casts = [], []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            kept.append(init)
            continue
        array = numpy_helper.to_array(init)
        if not _convertible(array):
            kept.append(init)
            continue
        half = numpy_helper.from_array(array.astype(np.float16), f"{init.name}.fp16")
        kept.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT))
    nodes = casts + list(graph.node)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(casts)
