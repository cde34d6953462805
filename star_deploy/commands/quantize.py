"""``star-deploy quantize``: an int8 copy of an fp32 artefact directory (weight-only, or dynamic activations)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..core.extras import require
from ..core.graphs import ACCURACY_LEVEL
from ..errors import ConfigError
from ..files.atomic import check_separate, check_writable
from .common import ArtifactsAlias, OverwriteOpt, artifacts_folder, reports_errors


def quantize(
    out: Annotated[Path, typer.Option("--out", "-o", help="New artefact folder (manifest precision int8).")],
    artifacts: Annotated[Path | None, typer.Argument(help="fp32 artefact folder made by `star-deploy export`.")] = None,
    accuracy_level: Annotated[
        int, typer.Option("--accuracy-level", help="MatMulNBits compute: 4 int8 (fast), 1 float32 (closer to fp32).")
    ] = ACCURACY_LEVEL,
    dynamic: Annotated[
        bool,
        typer.Option(
            "--dynamic",
            help="int8 weights and activations (MatMulInteger, precision int8-dynamic): the fast CPU path.",
        ),
    ] = False,
    decoder: Annotated[
        bool,
        typer.Option(
            "--decoder",
            help="Only the VQ decoder's convolutions to int8 (static QDQ, calibrated); every fast mode still runs.",
        ),
    ] = False,
    artifacts_option: ArtifactsAlias = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Quantize the transformer step (and text encoder) weights to int8 for ONNX Runtime.

    Default: weight-only MatMulNBits (precision int8). --dynamic: the step's MatMuls as
    MatMulInteger with activations quantized at run time (precision int8-dynamic; the text
    encoder and the logits head stay float32). --decoder: the VQ decoder alone, its convolutions
    int8 with calibrated activation ranges (precision stays fp32; docs/fast.md).
    """
    artifacts = artifacts_folder(artifacts, artifacts_option)
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ConfigError(f"--accuracy-level {accuracy_level}: choose 0 to 4")
    if decoder and dynamic:
        raise ConfigError("--decoder and --dynamic: choose one (quantize the decoder of an fp32 folder)")
    check_separate([out], [artifacts])
    check_writable(out, overwrite)
    require("onnx", "star-deploy quantize")
    if decoder:
        from ..evaluation.calibration import calibration_latents
        from ..export.decoder_quant import quantize_decoder

        quantize_decoder(artifacts, out, calibration_latents(artifacts), overwrite=overwrite)
    elif dynamic:
        from ..export.dynamic_quant import dynamic_artifacts

        dynamic_artifacts(artifacts, out, overwrite=overwrite)
    else:
        from ..export.quantize import quantize_artifacts

        quantize_artifacts(artifacts, out, bits=8, overwrite=overwrite, accuracy_level=accuracy_level)
    typer.echo(str(out))


command = reports_errors(quantize)
