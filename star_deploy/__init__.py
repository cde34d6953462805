"""star-deploy: STAR text-to-image from official checkpoints to ONNX, TensorRT and ONNX Runtime.

``from star_deploy import StarPipeline`` is the Python API (see ``star_deploy.api``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

__all__ = ["StarPipeline", "StarPipelineOutput", "__version__"]

if TYPE_CHECKING:
    from .api import StarPipeline, StarPipelineOutput


def __getattr__(name: str) -> Any:
    """Import the API on first use, so that ``import star_deploy`` (and the CLI) start fast."""
    if name in ("StarPipeline", "StarPipelineOutput"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'star_deploy' has no attribute {name!r}")
