"""A site's graph files: large graphs with their weights in separate parts, each file gzip-compressed where it pays.

A graph whose weights exceed ``PART_BYTES`` is written as ``<graph>.onnx`` (the graph without its
weights) plus ``<graph>.onnx.data.0``, ``.1``, ... (ONNX external data): every part holds whole
tensors, at most ``PART_BYTES`` of them unless one tensor alone is larger. The page hands the parts
to onnxruntime-web's ``externalData`` session option; on WebGPU the weights then go from those
buffers to the GPU without a copy in the WebAssembly heap.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from ..errors import ConfigError

PART_BYTES = 256 * 2**20
"""Small enough for every browser's ArrayBuffer (2 GiB in some) and WebCrypto's one-shot sha256 of a part,
large enough that a 1024-px d30 transformer is four files."""
MAX_TENSOR_BYTES = 2**31 - 1
"""One tensor is one buffer for the browser; larger ones cannot be loaded."""
INLINE_BYTES = 1024
"""Tensors smaller than this stay inside the graph file (shapes, scalars, small tables)."""
GZ = ".gz"
GZIP_LEVEL = 6
"""Level 9 saves 1% more and takes several times longer."""
MIN_GZIP_SAVING = 0.05
"""A file stays uncompressed where gzip saves less than this share (4-bit or random weights): the page
then skips decompressing it."""


def weight_bytes(model) -> int:
    return sum(_nbytes(t) for t in model.graph.initializer)


def _nbytes(tensor) -> int:
    return len(tensor.raw_data) if tensor.HasField("raw_data") else tensor.ByteSize()


def _ensure_raw(tensor) -> None:
    """Tensors with their values in typed fields (float_data, ...) move them to raw_data, which external data needs."""
    if tensor.HasField("raw_data"):
        return
    from onnx import numpy_helper

    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))


def assign_parts(model, file: str, part_bytes: int) -> list[str]:
    """Give every initializer of at least ``INLINE_BYTES`` a part (``file.data.<i>``) in graph order; the part names."""
    from onnx.external_data_helper import set_external_data

    parts: list[str] = []
    filled = part_bytes
    for tensor in model.graph.initializer:
        _ensure_raw(tensor)
        size = len(tensor.raw_data)
        if size < INLINE_BYTES:
            continue
        if size > MAX_TENSOR_BYTES:
            raise ConfigError(
                f"{file}: weight {tensor.name} has {size / 2**30:.1f} GiB, more than a browser loads in one buffer"
            )
        if filled + size > part_bytes and filled > 0:
            parts.append(f"{file}.data.{len(parts)}")
            filled = 0
        set_external_data(tensor, parts[-1])
        filled += size
    return parts


def write_graph(model, folder: Path, file: str, part_bytes: int = PART_BYTES) -> list[str]:
    """Save ``model`` as ``folder/file``, its weights in parts when they exceed ``part_bytes``; the part names."""
    import onnx

    parts = assign_parts(model, file, part_bytes) if weight_bytes(model) > part_bytes else []
    onnx.save(model, str(folder / file))
    return parts


def compress(path: Path) -> Path:
    """``path`` gzip-compressed as ``path.gz`` where that saves ``MIN_GZIP_SAVING``, else ``path``; the file kept.

    No timestamp is stored: the same input gives the same bytes.
    """
    target = path.with_name(path.name + GZ)
    with path.open("rb") as src, gzip.GzipFile(target, "wb", GZIP_LEVEL, mtime=0) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    if target.stat().st_size > (1 - MIN_GZIP_SAVING) * path.stat().st_size:
        target.unlink()
        return path
    path.unlink()
    return target
