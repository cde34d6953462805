"""A graph file's inputs and outputs against the contract of graphs.py: the check every loader shares."""

from __future__ import annotations

from pathlib import Path

from ..core.graphs import GraphSpec, TensorSpec
from ..errors import ArtifactError
from .onnx_io import OnnxHeader, ValueInfo, read_header


def _side_problem(kind: str, found: list[ValueInfo], expected: tuple[TensorSpec, ...]) -> str | None:
    """What differs between one side (inputs or outputs) of a graph and its spec, or None."""
    have = {v.name: v for v in found}
    want = {t.name: t for t in expected}
    missing, extra = [n for n in want if n not in have], [n for n in have if n not in want]
    if missing or extra:
        parts = ([f"lack {', '.join(missing[:3])}"] if missing else []) + (
            [f"include unexpected {', '.join(extra[:3])}"] if extra else []
        )
        return f"its {kind} {' and '.join(parts)}"
    for name, spec in want.items():
        value = have[name]
        if value.dtype is not None and value.dtype != spec.dtype:
            return f"its {kind[:-1]} {name} is {value.dtype}, not {spec.dtype}"
        if value.shape is None:
            continue
        if len(value.shape) != len(spec.shape):
            return f"its {kind[:-1]} {name} has {len(value.shape)} dimensions, not {len(spec.shape)}"
        for axis, (found, wanted) in enumerate(zip(value.shape, spec.shape)):
            if isinstance(found, int) and isinstance(wanted, int) and found != wanted:
                return f"its {kind[:-1]} {name} has {found} at axis {axis}, not {wanted}"
    return None


def io_problem(header: OnnxHeader, spec: GraphSpec) -> str | None:
    """Why a graph with ``header`` cannot serve as ``spec.name`` (names, dtypes, ranks, fixed sizes), else None."""
    return _side_problem("inputs", header.inputs, spec.inputs) or _side_problem("outputs", header.outputs, spec.outputs)


def check_graph_file(path: Path, spec: GraphSpec) -> None:
    """Refuse a graph file that does not have the inputs and outputs of ``spec`` (e.g. another graph's file)."""
    problem = io_problem(read_header(path), spec)
    if problem is not None:
        raise ArtifactError(
            f"{path}: not the {spec.name} graph this folder needs ({problem}); "
            f"export the folder again instead of replacing its files"
        )
