"""An ONNX file's opsets, graph inputs and outputs and metadata, read without the onnx package.

An ONNX model is a protobuf message; this reader walks its wire format field by field and
seeks past everything else (nodes, initializers), so even a large graph is read in a few
reads. Protobuf merges concatenated messages, so :func:`append_metadata` adds a metadata
entry by appending its bytes to the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import ArtifactError
from ..files.regular import open_regular

MODEL_OPSET, MODEL_GRAPH, MODEL_METADATA = 8, 7, 14
GRAPH_INPUT, GRAPH_OUTPUT = 11, 12
VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5
ELEM_TYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    16: "bfloat16",
}
"""ONNX TensorProto.DataType -> the dtype names of graphs.py."""


class NotOnnx(ValueError):
    """The bytes are not an ONNX model's protobuf."""


@dataclass(frozen=True)
class ValueInfo:
    """One graph input or output: its name, element type and shape (``None`` if not a tensor or not stated).

    A dimension is its size, the name of a symbolic size, or ``None`` if the file leaves it open.
    """

    name: str
    dtype: str | None
    shape: tuple[int | str | None, ...] | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


@dataclass
class OnnxHeader:
    """What a runtime binds to: opsets, graph inputs and outputs, and the model's metadata."""

    opsets: dict[str, int] = field(default_factory=dict)
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


def _varint(f: BinaryIO, end: int) -> int:
    value, shift = 0, 0
    while True:
        if f.tell() >= end or shift > 63:
            raise NotOnnx("truncated varint")
        byte = f.read(1)[0]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value


def _fields(f: BinaryIO, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, wire type, value) of each field up to ``end``; for BYTES the value is its length and the
    file is left at its start (a caller that does not read it is moved past it)."""
    while f.tell() < end:
        tag = _varint(f, end)
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            yield number, wire, _varint(f, end)
        elif wire in (FIXED64, FIXED32):
            f.seek(8 if wire == FIXED64 else 4, os.SEEK_CUR)
        elif wire == BYTES:
            length = _varint(f, end)
            start = f.tell()
            if number == 0 or start + length > end:
                raise NotOnnx("field runs past the end")
            yield number, wire, length
            f.seek(start + length)
        else:
            raise NotOnnx(f"unsupported wire type {wire}")
    if f.tell() != end:
        raise NotOnnx("field runs past the end")


def _text(f: BinaryIO, length: int) -> str:
    data = f.read(length)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise NotOnnx("a name is not UTF-8") from None


def _message(f: BinaryIO, length: int, texts: tuple[int, ...], nested: dict[int, object]) -> dict[int, object]:
    """Fields of one small message: ``texts`` as strings, varints as ints, ``nested`` ones parsed by their reader."""
    out: dict[int, object] = {}
    for number, wire, value in _fields(f, f.tell() + length):
        if wire == VARINT:
            out[number] = value
        elif number in texts:
            out[number] = _text(f, value)
        elif number in nested:
            out[number] = nested[number](f, value)  # type: ignore[operator]
    return out


def _dimension(f: BinaryIO, length: int) -> int | str | None:
    fields = _message(f, length, (2,), {})
    return fields.get(1, fields.get(2))  # type: ignore[return-value]


def _shape(f: BinaryIO, length: int) -> tuple[int | str | None, ...]:
    dims = []
    for number, wire, size in _fields(f, f.tell() + length):
        if number == 1 and wire == BYTES:
            dims.append(_dimension(f, size))
    return tuple(dims)


def _tensor_type(f: BinaryIO, length: int) -> dict[int, object]:
    return _message(f, length, (), {2: _shape})


def _type(f: BinaryIO, length: int) -> dict[int, object]:
    return _message(f, length, (), {1: _tensor_type})


def _value_info(f: BinaryIO, length: int) -> ValueInfo:
    fields = _message(f, length, (1,), {2: _type})
    tensor = fields.get(2, {}).get(1)  # type: ignore[union-attr]
    dtype = ELEM_TYPES.get(tensor.get(1, 0), f"type {tensor.get(1, 0)}") if tensor is not None else None
    return ValueInfo(str(fields.get(1, "")), dtype, tensor.get(2) if tensor is not None else None)


def _graph(f: BinaryIO, length: int, header: OnnxHeader) -> None:
    for number, _, size in _fields(f, f.tell() + length):
        if number in (GRAPH_INPUT, GRAPH_OUTPUT):
            (header.inputs if number == GRAPH_INPUT else header.outputs).append(_value_info(f, size))


def read_header_from(f: BinaryIO, size: int) -> OnnxHeader:
    """The header of the ONNX model in ``f`` (``size`` bytes); :class:`NotOnnx` if it is not one."""
    header, graphs = OnnxHeader(), 0
    for number, wire, length in _fields(f, size):
        if wire != BYTES:
            continue
        if number == MODEL_GRAPH:
            graphs += 1
            _graph(f, length, header)
        elif number == MODEL_OPSET:
            entry = _message(f, length, (1,), {})
            header.opsets[str(entry.get(1, ""))] = int(entry.get(2, 0))  # type: ignore[arg-type]
        elif number == MODEL_METADATA:
            entry = _message(f, length, (1, 2), {})
            header.metadata[str(entry.get(1, ""))] = str(entry.get(2, ""))
    if graphs == 0 or not header.outputs:
        raise NotOnnx("no graph with outputs")
    return header


def read_header(path: Path) -> OnnxHeader:
    """The header of the ONNX file at ``path``; :class:`ArtifactError` naming it if it is not a readable one."""
    try:
        with open_regular(path) as f:
            return read_header_from(f, os.fstat(f.fileno()).st_size)
    except (NotOnnx, IndexError) as exc:
        raise ArtifactError(f"{path}: not a readable ONNX graph ({exc}); export it again") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ArtifactError(f"{path}: cannot be read as an ONNX graph ({reason}); export it again") from None


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _varint_bytes(number << 3 | BYTES) + _varint_bytes(len(data)) + data


def append_metadata(path: Path, entries: dict[str, str]) -> None:
    """Add ``entries`` to the model's metadata_props by appending them (protobuf merges repeated fields)."""
    data = b"".join(
        _bytes_field(MODEL_METADATA, _bytes_field(1, k.encode()) + _bytes_field(2, v.encode()))
        for k, v in entries.items()
    )
    with path.open("ab") as f:
        f.write(data)
