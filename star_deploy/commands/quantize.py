"""``star-deploy quantize``: a weight-only int8 copy of an fp32 artefact directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..atomic import check_separate, check_writable
from ..errors import ConfigError
from ..graphs import ACCURACY_LEVEL
from .common import OverwriteOpt, reports_errors


def quantize(
    artifacts: Annotated[Path, typer.Argument(help="fp32 artefact folder made by `star-deploy export`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New artefact folder (manifest precision int8).")],
    accuracy_level: Annotated[
        int, typer.Option("--accuracy-level", help="MatMulNBits compute: 4 int8 (fast), 1 float32 (closer to fp32).")
    ] = ACCURACY_LEVEL,
    overwrite: OverwriteOpt = False,
) -> None:
    """Quantize the transformer step and text encoder weights to int8 (ONNX Runtime MatMulNBits)."""
    from ..export.quantize import quantize_artifacts

    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ConfigError(f"--accuracy-level {accuracy_level}: choose 0 to 4")
    check_separate([out], [artifacts])
    check_writable(out, overwrite)
    quantize_artifacts(artifacts, out, bits=8, overwrite=overwrite, accuracy_level=accuracy_level)
    typer.echo(str(out))


command = reports_errors(quantize)
