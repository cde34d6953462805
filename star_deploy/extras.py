"""Optional dependencies: a clear error, naming the extra to install, when a feature needs one."""

from __future__ import annotations

from .errors import BackendUnavailableError


def require_torch(what: str) -> None:
    """Refuse work that needs PyTorch on an install without it, saying how to get it."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise BackendUnavailableError(
            f"{what} needs PyTorch: pip install 'star-deploy[torch]' (the base install runs exported graphs "
            f"with --backend onnxruntime)"
        ) from None
