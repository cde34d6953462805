"""TensorRT readiness of exported graphs: supported operators, data types and profilable shapes.

Static checks on the ONNX files only (no TensorRT needed): every node's operator is in the
ONNX-TensorRT parser's support table (star_deploy/data/trt_onnx_ops.json), its data input has
a type TensorRT supports for that operator, operator restrictions (Resize modes, constant
reduction axes, ...) hold, and every dynamic dimension of every graph input and output is a
symbolic dimension of the public contract (graphs.py), so the per-scale optimization
profiles of engines/profiles.py cover it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import onnx
from onnx import TensorProto

from ..core.graphs import GraphSpec, TensorSpec
from .loadable import check_loadable, read_onnx

OPS_TABLE = Path(__file__).resolve().parent.parent / "data" / "trt_onnx_ops.json"
ONNX_DOMAINS = ("", "ai.onnx")
TYPE_NAMES = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
    TensorProto.DOUBLE: "DOUBLE",
    TensorProto.FLOAT8E4M3FN: "FP8",
}
IO_TYPES = {"FP32", "FP16", "BF16", "INT32", "INT64", "INT8", "UINT8", "BOOL"}
"""Types TensorRT 10 accepts for network inputs and outputs."""
DATA_DEPENDENT_OPS = {"NonZero", "NonMaxSuppression", "Unique"}
RESIZE_ALLOWED = {
    "mode": {"nearest", "linear"},
    "coordinate_transformation_mode": {
        "half_pixel",
        "pytorch_half_pixel",
        "tf_half_pixel_for_nn",
        "asymmetric",
        "align_corners",
    },
    "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"},
    "keep_aspect_ratio_policy": {"stretch"},
}
CONSTANT_AXES_INPUT = {
    "Squeeze": 1,
    "Unsqueeze": 1,
    "ReduceL1": 1,
    "ReduceL2": 1,
    "ReduceLogSum": 1,
    "ReduceLogSumExp": 1,
    "ReduceMax": 1,
    "ReduceMean": 1,
    "ReduceMin": 1,
    "ReduceProd": 1,
    "ReduceSum": 1,
    "ReduceSumSquare": 1,
    "CumSum": 1,
}


@dataclass(frozen=True)
class OpsTable:
    """The parser's support matrix for one range of TensorRT releases (``tensorrt_version``: "10.1-10.11")."""

    tensorrt_version: str
    opset_min: int
    opset_max: int
    source: str
    operators: dict[str, frozenset[str]]
    releases: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (99, 99))

    def supports(self, op: str) -> bool:
        return op in self.operators

    def covers(self, version: str) -> bool:
        """Whether TensorRT ``version`` ("10.8.0.43") lies in this table's release range."""
        return self.releases[0] <= release(version) <= self.releases[1]


def release(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string."""
    parts = version.split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


@cache
def release_tables(path: Path = OPS_TABLE) -> tuple[OpsTable, ...]:
    """One table per release range of the file, oldest first: the newest table with that range's replacements."""
    data = json.loads(path.read_text())
    base = {name: frozenset(entry["types"]) for name, entry in data["operators"].items()}
    tables = []
    for entry in data.get("releases", [{"from": data["tensorrt_version"], "through": data["tensorrt_version"]}]):
        ops = base | {name: frozenset(e["types"]) for name, e in entry.get("operators", {}).items()}
        label = entry["from"] if entry["from"] == entry["through"] else f"{entry['from']}-{entry['through']}"
        span = (release(entry["from"]), release(entry["through"]))
        tables.append(OpsTable(label, data["opset_min"], data["opset_max"], data["source"], ops, span))
    return tuple(tables)


def load_ops_table(path: Path = OPS_TABLE, version: str | None = None) -> OpsTable:
    """The table of TensorRT ``version`` (default: the newest release the file covers)."""
    tables = release_tables(path)
    if version is None:
        return tables[-1]
    newer = tables[-1] if release(version) > tables[-1].releases[1] else tables[0]
    return next((t for t in tables if t.covers(version)), newer)


@dataclass
class GraphReport:
    """Problems found in one graph file; empty means ready for TensorRT."""

    graph: str
    path: Path
    problems: list[str] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, message: str) -> None:
        self.problems.append(f"{self.path.name}: {message}")


def _constants(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named value, after ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _attr(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return None


def _check_restrictions(node: onnx.NodeProto, constants: set[str], report: GraphReport) -> None:
    where = f"node {node.name or '(unnamed)'} ({node.op_type})"
    if node.op_type == "Resize":
        for attr, allowed in RESIZE_ALLOWED.items():
            value = _attr(node, attr)
            if value is not None and value not in allowed:
                report.add(
                    f"{where}: {attr}={value!r} is not supported by TensorRT (allowed: {', '.join(sorted(allowed))}); "
                    "express the resampling as matrix products (see star_deploy/core/tables.py)"
                )
        if _attr(node, "antialias"):
            report.add(f"{where}: antialiased Resize is not supported by TensorRT")
    index = CONSTANT_AXES_INPUT.get(node.op_type)
    if index is not None and len(node.input) > index and node.input[index] and node.input[index] not in constants:
        report.add(f"{where}: input {node.input[index]!r} (axes) must be a constant for TensorRT")
    if node.op_type == "LayerNormalization" and any(node.output[1:]):
        report.add(f"{where}: TensorRT supports only the first output (Y) of LayerNormalization")
    if node.op_type == "TopK" and _attr(node, "sorted") == 0:
        report.add(f"{where}: TensorRT requires sorted=1")


def _check_nodes(model: onnx.ModelProto, table: OpsTable, report: GraphReport) -> None:
    types = _value_types(model)
    graph = model.graph
    constants = _constants(graph)
    local = {f.name for f in model.functions}
    nodes = list(graph.node) + [n for f in model.functions for n in f.node]
    for node in nodes:
        if node.domain not in ONNX_DOMAINS and node.op_type in local:
            continue
        report.op_counts[node.op_type] = report.op_counts.get(node.op_type, 0) + 1
        where = f"node {node.name or '(unnamed)'}"
        if node.domain not in ONNX_DOMAINS:
            report.add(
                f"{where}: operator {node.domain}::{node.op_type} is a custom-domain op the TensorRT ONNX parser "
                "does not know (it would need a plugin)"
            )
            continue
        if not table.supports(node.op_type):
            report.add(
                f"{where}: operator {node.op_type} is not supported by the TensorRT {table.tensorrt_version} ONNX "
                "parser (see star_deploy/data/trt_onnx_ops.json); re-export without it"
            )
            continue
        _check_types(node, types, table, report)
        _check_restrictions(node, constants, report)


def _check_types(node: onnx.NodeProto, types: dict[str, int], table: OpsTable, report: GraphReport) -> None:
    """The data input (input 0) and, for Cast, the target type must be types TensorRT runs the op in."""
    allowed = table.operators[node.op_type]
    checked = [node.input[0]] if node.input and node.input[0] else []
    if node.op_type in ("Cast", "CastLike"):
        checked += list(node.output[:1])
    for name in checked:
        elem = types.get(name)
        if elem is None or elem == TensorProto.UNDEFINED:
            continue
        type_name = TYPE_NAMES.get(elem, TensorProto.DataType.Name(elem))
        if type_name not in allowed:
            need = (
                "INT32"
                if type_name in ("INT64", "UINT64", "UINT32", "INT16") and "INT32" in allowed
                else " or ".join(sorted(allowed))
            )
            report.add(
                f"node {node.name or '(unnamed)'} ({node.op_type}): tensor {name!r} is {type_name}, "
                f"TensorRT runs {node.op_type} in {', '.join(sorted(allowed))} only; cast it to {need} in the export"
            )


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _check_io(values, specs: tuple[TensorSpec, ...], kind: str, report: GraphReport) -> None:
    """Every dynamic ONNX dimension must be symbolic in the contract (so a profile sets it)."""
    by_name = {v.name: v for v in values}
    for spec in specs:
        value = by_name.get(spec.name)
        if value is None:
            report.add(f"{kind} {spec.name!r} of the contract is missing from the graph; export again")
            continue
        elem = TYPE_NAMES.get(value.type.tensor_type.elem_type, "UNSUPPORTED")
        if elem not in IO_TYPES:
            report.add(f"{kind} {spec.name!r} has type {elem}, which TensorRT cannot bind")
        dims = _dims(value)
        if dims is None:
            report.add(f"{kind} {spec.name!r} has no shape (unknown rank): TensorRT cannot build a profile for it")
            continue
        if len(dims) != len(spec.shape):
            report.add(f"{kind} {spec.name!r} has rank {len(dims)}, the contract says {len(spec.shape)}; export again")
            continue
        for axis, (got, want) in enumerate(zip(dims, spec.shape)):
            if isinstance(want, int) and got != want:
                report.add(
                    f"{kind} {spec.name!r} axis {axis} is dynamic ({got!r}) but no profile sets it "
                    f"(the contract fixes it to {want}); export with a static size"
                )
            elif isinstance(want, str) and isinstance(got, int):
                report.add(
                    f"{kind} {spec.name!r} axis {axis} is fixed to {got} but must follow {want!r} across scales; "
                    "export it as a dynamic dimension"
                )


def check_graph(path: Path, spec: GraphSpec, table: OpsTable | None = None) -> GraphReport:
    """All TensorRT-readiness problems of one ONNX file against its contract ``spec``."""
    table = table or load_ops_table()
    report = GraphReport(spec.name, path)
    check_loadable(path)
    model = read_onnx(path, load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ONNX_DOMAINS), None)
    if opset is None or not table.opset_min <= opset <= table.opset_max:
        report.add(
            f"opset {opset} is outside TensorRT {table.tensorrt_version}'s range "
            f"{table.opset_min}..{table.opset_max}; export with a supported opset"
        )
    _check_nodes(model, table, report)
    for node in model.graph.node:
        if node.op_type in DATA_DEPENDENT_OPS:
            report.add(
                f"node {node.name or '(unnamed)'} ({node.op_type}) has a data-dependent output shape; "
                "the runtime needs outputs whose shapes the profiles determine"
            )
    _check_io(model.graph.input, spec.inputs, "input", report)
    _check_io(model.graph.output, spec.outputs, "output", report)
    return report


def check_artifacts(
    graphs: dict[str, GraphSpec], paths: dict[str, Path], tables: tuple[OpsTable, ...] | None = None
) -> list[GraphReport]:
    """One report per graph of an artefact directory (``paths`` from Manifest.path), over every release range of
    ``tables`` (default: all the table covers); a problem of only some releases names them."""
    tables = tables or release_tables()
    reports = []
    for name, spec in graphs.items():
        per_release = [check_graph(paths[name], spec, table) for table in tables]
        report = GraphReport(name, paths[name], op_counts=per_release[-1].op_counts)
        for problem in dict.fromkeys(p for r in per_release for p in r.problems):
            where = [t.tensorrt_version for t, r in zip(tables, per_release) if problem in r.problems]
            report.problems.append(problem if len(where) == len(tables) else f"TensorRT {', '.join(where)}: {problem}")
        reports.append(report)
    return reports
