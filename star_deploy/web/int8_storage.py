"""Graphs with their large float32 tables and convolution kernels stored as int8, dequantized on load.

Each converted initializer ``W`` becomes ``W.int8`` (symmetric, one float32 scale per output
channel or table row: ``W.scale``) and a ``DequantizeLinear(axis)`` node producing ``W``, so the
graph's arithmetic stays float32. Converted are the float32 initializers of at least
``MIN_ELEMENTS`` values read only as a ``Gather`` table (token and position embeddings, per row)
or as a ``Conv`` kernel (per output channel): what ``MatMulNBits`` leaves in float. Per-axis int8
``DequantizeLinear`` runs in onnxruntime-web on WebAssembly and on WebGPU.
"""

from __future__ import annotations

import numpy as np

MIN_ELEMENTS = 65536
"""Smaller tensors (norms, biases, small codebooks) stay as they are: they cost little to download."""
AXIS = {("Gather", 0): 0, ("Conv", 1): 0}
"""The consumers converted, as (op type, input index), and the axis that gets one scale per slice."""


def quantize_int8(array: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 values and float32 scales, one per slice along ``axis``."""
    moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
    scale = np.abs(moved).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = -1
    q = np.clip(np.rint(array / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape)


def _axes(graph) -> dict[str, int]:
    """The initializers every consumer of which is one kind listed in ``AXIS``, with their axis."""
    names = {init.name for init in graph.initializer}
    uses: dict[str, set] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in names:
                uses.setdefault(name, set()).add((node.op_type, index))
    outputs = {o.name for o in graph.output}
    return {
        name: AXIS[next(iter(kinds))]
        for name, kinds in uses.items()
        if len(kinds) == 1 and next(iter(kinds)) in AXIS and name not in outputs
    }


def store_int8(model) -> int:
    """Store ``model``'s (an onnx ModelProto, changed in place) large float32 tables and kernels as int8; how many."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    axes = _axes(graph)
    kept, dequantize = [], []
    for init in graph.initializer:
        size = int(np.prod(init.dims)) if init.dims else 1
        if init.data_type != onnx.TensorProto.FLOAT or init.name not in axes or size < MIN_ELEMENTS:
            kept.append(init)
            continue
        axis = axes[init.name]
        q, scale = quantize_int8(numpy_helper.to_array(init), axis)
        kept += [numpy_helper.from_array(q, f"{init.name}.int8"), numpy_helper.from_array(scale, f"{init.name}.scale")]
        dequantize.append(
            onnx.helper.make_node(
                "DequantizeLinear", [f"{init.name}.int8", f"{init.name}.scale"], [init.name], axis=axis
            )
        )
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = dequantize + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(dequantize)
