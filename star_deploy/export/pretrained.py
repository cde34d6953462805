"""``StarPipeline.save_pretrained``: a torch-loaded pipeline's weights -> an artefact folder."""

from __future__ import annotations

from pathlib import Path

from ..core.config import SamplingConfig
from ..core.graphs import EXPORT_PRECISIONS
from ..errors import ConfigError
from ..files.atomic import check_separate, check_writable
from ..release.weights import StarTorchModel
from .artifacts import export_artifacts


def save_artifacts(
    model: StarTorchModel, dtype: str, out: Path, precision: str, overwrite: bool, sampling: SamplingConfig
) -> Path:
    """Export ``model`` (loaded in ``dtype``) to ``out`` at ``precision``, recording ``sampling`` as defaults."""
    if precision not in EXPORT_PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(EXPORT_PRECISIONS)}, got {precision!r}")
    if dtype != "float32":
        raise ConfigError(
            f"save_pretrained exports from float32 weights, this pipeline holds {dtype}; load it with "
            f"dtype='float32' (precision='fp16' exports fp16 graphs)"
        )
    check_writable(out, overwrite)
    check_separate([out], model.inputs, "save_pretrained folder")
    return export_artifacts(model, out, precision, overwrite, sampling=sampling)
