"""The step graph's self-attention computed for a fixed number of query chunks: no full score tensor exists.

The exported self-attention is ``MatMul(q, k^T) -> [Cast] -> Softmax(-1) -> [Cast] -> MatMul(., v)`` with q
(rows, heads, queries, head_dim): at 1024-d30 its last scale's float32 scores are (2, 30, 4096, 9451), 9.3 GB,
more than any WebGPU adapter puts in one buffer. Each query's softmax row depends on that query alone, so the
rewrite slices q along the query axis into ``chunks`` pieces of ``chunk`` queries, runs the chain on each and
concatenates the outputs. The count is static, from the model's largest scale, so the graph keeps its dynamic
query length and its inputs and outputs; at a smaller scale the pieces past its last query hold that query once
more (WebGPU kernels refuse empty tensors), and the Concat is cut back to the query count. The pieces are
emitted one after another where the original chain was, so an executor that follows the graph's order frees
each piece's scores before the next is made.

onnxruntime-web's fused ``MultiHeadAttention`` on WebGPU does not hold the whole scores either, but its results
differ from float32 attention by up to 0.6 % of the output (measured on SwiftShader), enough to change tokens; its
``GroupQueryAttention`` refuses ``causal=0`` on WebGPU (docs/web.md). The pieces keep the exported arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUERY_AXIS = -2
PASS_THROUGH = ("Cast",)
"""Ops between the two MatMuls and the Softmax that act per element (the float32 casts of an fp16 export)."""
LAST = np.iinfo(np.int64).max
PREFIX = "attention_chunks"
"""Names of the initializers the rewrite adds (the pieces' bounds)."""


@dataclass(frozen=True)
class AttentionChain:
    """One self-attention: the nodes from the scores' MatMul to the output's MatMul, in order."""

    nodes: list
    query: str
    output: str


class _Edges:
    """Who produces and who reads each tensor of a graph."""

    def __init__(self, graph) -> None:
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def only_reader(self, name: str):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    def chain_at(self, softmax) -> AttentionChain | None:
        """The chain around ``softmax``, if it is a self-attention's and its intermediate tensors feed nothing else."""
        before, node = [], self.producer.get(softmax.input[0])
        while node is not None and node.op_type in PASS_THROUGH:
            before.insert(0, node)
            node = self.producer.get(node.input[0])
        if node is None or node.op_type != "MatMul":
            return None
        scores, after, node = node, [], self.only_reader(softmax.output[0])
        while node is not None and node.op_type in PASS_THROUGH:
            after.append(node)
            node = self.only_reader(node.output[0])
        if node is None or node.op_type != "MatMul" or node.input[0] != (after or [softmax])[-1].output[0]:
            return None
        nodes = [scores, *before, softmax, *after, node]
        if any(len(self.consumers.get(n.output[0], [])) != 1 for n in nodes[:-1]):
            return None
        return AttentionChain(nodes, scores.input[0], node.output[0])


def self_attention_chains(graph) -> list[AttentionChain]:
    """Every ``MatMul -> [Cast] -> Softmax(last axis) -> [Cast] -> MatMul`` whose scores feed nothing else.

    Softmax fed by anything else (the cross-attention adds the text mask) is left alone: its scores span 77 keys.
    """
    edges = _Edges(graph)
    found = (edges.chain_at(n) for n in graph.node if n.op_type == "Softmax" and _axis(n) == -1)
    return [chain for chain in found if chain is not None]


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), -1)


def chunk_count(max_queries: int, chunk: int) -> int:
    """Pieces of ``chunk`` queries that cover the largest scale."""
    return -(-max_queries // chunk)


def _bound_initializers(chunks: int, chunk: int) -> list:
    """The axis, 0, 1, and each piece's first and end query (the last piece's end: the largest int64)."""
    from onnx import numpy_helper

    values = {"axes": QUERY_AXIS, "zero": 0, "one": 1}
    values |= {f"start.{i}": i * chunk for i in range(chunks)}
    values |= {f"end.{i}": (i + 1) * chunk if i < chunks - 1 else LAST for i in range(chunks)}
    return [numpy_helper.from_array(np.array([v], dtype=np.int64), f"{PREFIX}.{n}") for n, v in values.items()]


def _length_nodes(chain: AttentionChain) -> list:
    """The query count of ``chain`` (``{output}.length``) and the index of its last query (``{output}.last``)."""
    from onnx import helper

    length, last = f"{chain.output}.length", f"{chain.output}.last"
    return [
        helper.make_node("Shape", [chain.query], [length], start=QUERY_AXIS, end=QUERY_AXIS + 1, name=length),
        helper.make_node("Sub", [length, f"{PREFIX}.one"], [last], name=last),
    ]


def _piece(chain: AttentionChain, i: int) -> tuple[list, str]:
    """Piece ``i`` of ``chain``: a Slice of the queries and a renamed copy of the chain; and its output.

    A piece past the last query starts at the last query instead: it is never empty (WebGPU kernels refuse
    empty tensors), and its one repeated row is cut off after the Concat.
    """
    import onnx
    from onnx import helper

    prefix = f"{chain.output}.chunk{i}"
    renamed = {chain.query: f"{prefix}.query"}
    start, nodes = f"{PREFIX}.start.{i}", []
    if i:
        start = f"{prefix}.start"
        nodes.append(helper.make_node("Min", [f"{PREFIX}.start.{i}", f"{chain.output}.last"], [start], name=start))
    bounds = [start, f"{PREFIX}.end.{i}", f"{PREFIX}.axes"]
    nodes.append(helper.make_node("Slice", [chain.query, *bounds], [renamed[chain.query]], name=f"{prefix}.slice"))
    for node in chain.nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = node.name and f"{prefix}.{node.name}"
        copy.input[:] = [renamed.get(x, x) for x in node.input]
        copy.output[:] = [renamed.setdefault(o, f"{prefix}.{o}") for o in node.output]
        nodes.append(copy)
    return nodes, renamed[chain.output]


def _pieces(chain: AttentionChain, chunks: int) -> list:
    """Every node that replaces ``chain``: its length, the pieces, their Concat cut to the query count."""
    from onnx import helper

    pieces = [_piece(chain, i) for i in range(chunks)]
    joined, out = f"{chain.output}.pieces", chain.output
    return [
        *_length_nodes(chain),
        *(n for piece, _ in pieces for n in piece),
        helper.make_node("Concat", [o for _, o in pieces], [joined], axis=QUERY_AXIS, name=joined),
        helper.make_node("Slice", [joined, f"{PREFIX}.zero", f"{out}.length", f"{PREFIX}.axes"], [out], name=out),
    ]


def chunk_attention(model, chunk: int, max_queries: int) -> int:
    """Rewrite ``model``'s (an onnx ModelProto, changed in place) self-attentions into query pieces; how many.

    Nothing changes where one piece of ``chunk`` queries covers ``max_queries``.
    """
    chunks = chunk_count(max_queries, chunk)
    graph = model.graph
    chains = self_attention_chains(graph) if chunks > 1 else []
    if not chains:
        return 0
    graph.initializer.extend(_bound_initializers(chunks, chunk))
    replaced: dict[str, list] = {}
    for chain in chains:
        replaced[chain.output] = _pieces(chain, chunks)
        replaced.update({n.output[0]: [] for n in chain.nodes[:-1]})
    nodes = [new for n in graph.node for new in replaced.get(n.output[0], [n])]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(chains)
