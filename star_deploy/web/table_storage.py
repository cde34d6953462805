"""Graphs with their large float tables and convolution kernels stored as int8 or int4, dequantized on load.

Each converted initializer ``W`` becomes ``W.int8`` or ``W.int4`` (symmetric) with its scales ``W.scale``
(the dtype of ``W``) and a ``DequantizeLinear`` node producing ``W``, so the graph's arithmetic keeps
its float type. Converted are the float32 and float16 initializers of at least ``MIN_ELEMENTS`` values
read only as a ``Gather`` table (token and position embeddings) or as a ``Conv`` kernel: what
``MatMulNBits`` leaves in float. ``TableLayout`` says how many bits and which values share a scale:
one scale per table row or output channel (axis 0, ``DequantizeLinear``'s per-axis form of opset 13),
or one per block of ``block_size`` values along axis 1 (a row's values, a kernel's input channels;
the blocked form of opset 21). int4 needs opset 21: a graph of an older opset is converted with
onnx's version converter first. ``DequantizeLinear`` runs in onnxruntime-web on WebAssembly (the CPU
kernels) and on WebGPU, int8 and int4, per axis and blocked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_ELEMENTS = 65536
"""Smaller tensors (norms, biases, small codebooks) stay as they are: they cost little to download."""
CONSUMERS = {("Gather", 0), ("Conv", 1)}
"""The consumers converted, as (op type, input index): tables and kernels."""
INT4_OPSET = 21
"""The first opset whose ``DequantizeLinear`` takes int4 values and blocks."""
FLOAT16_OPSET = 19
"""The first opset whose ``DequantizeLinear`` gives float16 (float16 scales)."""


@dataclass(frozen=True)
class TableLayout:
    """How tables and kernels are stored: ``bits`` (8 or 4), and ``block_size`` values per scale along axis 1,
    or None for one scale per row (axis 0)."""

    bits: int
    block_size: int | None = None

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def opset(self) -> int:
        """The lowest opset whose ``DequantizeLinear`` reads this layout."""
        return 13 if self.bits == 8 and self.block_size is None else INT4_OPSET

    @property
    def axis(self) -> int:
        return 0 if self.block_size is None else 1

    def to_dict(self) -> dict:
        per = "table row or output channel" if self.block_size is None else f"block of {self.block_size} along axis 1"
        form = "opset 13 per-axis" if self.block_size is None else "opset 21 blocked"
        return {
            "method": f"DequantizeLinear ({form}), symmetric int{self.bits}, one scale per {per}",
            "bits": self.bits,
            "block_size": self.block_size,
        }


def quantize_table(array: np.ndarray, layout: TableLayout) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric values (int8 holding ``layout.bits``-bit integers) and scales of ``array``'s dtype."""
    magnitude = np.abs(array.astype(np.float32))
    if layout.block_size is None:
        scale = magnitude.reshape(array.shape[0], -1).max(axis=1)
    else:
        pad = [(0, 0), (0, -array.shape[1] % layout.block_size)] + [(0, 0)] * (array.ndim - 2)
        blocks = np.pad(magnitude, pad).reshape(array.shape[0], -1, layout.block_size, *array.shape[2:])
        scale = blocks.max(axis=2)
    scale = np.where(scale > 0, scale / layout.qmax, 1.0)
    stored = scale.astype(array.dtype)
    q = np.clip(np.rint(array.astype(np.float32) / expand(stored, layout, array.shape)), -layout.qmax, layout.qmax)
    return q.astype(np.int8), stored


def expand(scale: np.ndarray, layout: TableLayout, shape: tuple[int, ...]) -> np.ndarray:
    """``scale`` broadcast to an array of ``shape``: per row, or repeated over each block."""
    if layout.block_size is None:
        return scale.astype(np.float32).reshape(-1, *[1] * (len(shape) - 1))
    return np.repeat(scale.astype(np.float32), layout.block_size, axis=1)[:, : shape[1]]


def dequantize_table(q: np.ndarray, scale: np.ndarray, layout: TableLayout) -> np.ndarray:
    return q.astype(np.float32) * expand(scale, layout, q.shape)


def _consumed_tables(graph) -> dict[str, str]:
    """The initializers every consumer of which is one kind listed in ``CONSUMERS``, with that op type."""
    names = {init.name for init in graph.initializer}
    uses: dict[str, set] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in names:
                uses.setdefault(name, set()).add((node.op_type, index))
    outputs = {o.name for o in graph.output}
    return {
        name: next(iter(kinds))[0]
        for name, kinds in uses.items()
        if len(kinds) == 1 and kinds <= CONSUMERS and name not in outputs
    }


def _int_tensor(q: np.ndarray, name: str, bits: int):
    """``q`` as an int8 or int4 (two values a byte, the first in the low nibble) TensorProto."""
    import onnx
    from onnx import numpy_helper

    if bits == 8:
        return numpy_helper.from_array(q, name)
    flat = q.reshape(-1).astype(np.uint8) & 0x0F
    flat = np.pad(flat, (0, flat.size % 2))
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    return onnx.helper.make_tensor(name, onnx.TensorProto.INT4, q.shape, packed.tobytes(), raw=True)


def _default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _convertible(init, tables: dict[str, str]) -> bool:
    import onnx

    size = int(np.prod(init.dims)) if init.dims else 1
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    return init.data_type in floats and init.name in tables and size >= MIN_ELEMENTS


def _opset(layout: TableLayout, data_type: int) -> int:
    """The lowest opset whose ``DequantizeLinear`` gives ``data_type`` from ``layout``."""
    import onnx

    return max(layout.opset, FLOAT16_OPSET if data_type == onnx.TensorProto.FLOAT16 else 0)


def store_tables(model, layouts: dict[str, TableLayout]) -> int:
    """Store ``model``'s (an onnx ModelProto, changed in place) large float tables and kernels as ``layouts``
    says for their consumer's op type (``Gather``, ``Conv``); how many."""
    import onnx
    from onnx import numpy_helper

    tables = _consumed_tables(model.graph)
    used = [init for init in model.graph.initializer if _convertible(init, tables)]
    if not used:
        return 0
    needs_opset = max(_opset(layouts[tables[init.name]], init.data_type) for init in used)
    if _default_opset(model) < needs_opset:
        from onnx import version_converter

        model.CopyFrom(version_converter.convert_version(model, needs_opset))
    graph = model.graph
    kept, dequantize = [], []
    for init in graph.initializer:
        if not _convertible(init, tables):
            kept.append(init)
            continue
        layout = layouts[tables[init.name]]
        q, scale = quantize_table(numpy_helper.to_array(init), layout)
        values, scales = f"{init.name}.int{layout.bits}", f"{init.name}.scale"
        kept += [_int_tensor(q, values, layout.bits), numpy_helper.from_array(scale, scales)]
        blocked = {} if layout.block_size is None else {"block_size": layout.block_size}
        dequantize.append(
            onnx.helper.make_node("DequantizeLinear", [values, scales], [init.name], axis=layout.axis, **blocked)
        )
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = dequantize + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(dequantize)
