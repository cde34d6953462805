"""A graph file that its runtime or the onnx package cannot read: one ArtifactError naming the file and the fix.

The manifest's digests prove a file is the one recorded, not that it was sound when recorded (a folder
can be resealed by hand); these checks turn a parser's or a runtime's own error into that one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ArtifactError

REPAIR = "the graph is damaged: export the folder again (`star-deploy export`), or copy it anew from where it was made"
ORT_LOAD_ERRORS = ("InvalidProtobuf", "InvalidGraph", "NoSuchFile")
"""ONNX Runtime's exception types for a model file it cannot read (others say "Load model from ... failed")."""


def unreadable(path: Path, exc: BaseException) -> ArtifactError:
    """The one-line error of ``path`` failing to load with ``exc``."""
    lines = str(exc).strip().splitlines() or [""]
    reason = lines[0].split(" failed:")[-1].strip()[:160] or type(exc).__name__
    return ArtifactError(f"{path}: cannot be loaded ({reason}); {REPAIR}")


def is_load_error(exc: BaseException) -> bool:
    """Whether an ONNX Runtime session failed on its model file (not on a provider or an option)."""
    return type(exc).__name__ in ORT_LOAD_ERRORS or "Load model from" in str(exc)


def read_onnx(path: Path, load_external_data: bool = True) -> Any:
    """``onnx.load`` of ``path``; a file it cannot parse is an ArtifactError."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except (DecodeError, ValueError) as exc:
        raise unreadable(path, exc) from None


def check_loadable(path: Path) -> None:
    """Refuse a graph file that does not parse or whose graph is malformed (onnx's checker, read from the file)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, DecodeError, ValueError) as exc:
        raise unreadable(path, exc) from None
