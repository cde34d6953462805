"""Optional dependencies: a clear error, naming the extra to install, when a feature needs one."""

from __future__ import annotations

import importlib
import importlib.util

from ..errors import BackendUnavailableError

EXTRAS = {
    "torch": ("PyTorch", "torch"),
    "transformers": ("transformers", "torch"),
    "safetensors": ("safetensors", "torch"),
    "onnx": ("the onnx package", "torch"),
    "onnxscript": ("onnxscript", "torch"),
    "tensorrt": ("TensorRT", "tensorrt-cu12"),
    "polygraphy": ("Polygraphy", "torch"),
    "ray": ("Ray Serve", "serve"),
    "fastapi": ("FastAPI", "serve"),
}
"""Top-level module -> (what to call it, the extra that installs it)."""
NOTES = {
    "torch": "the base install runs exported graphs with --backend onnxruntime",
    "tensorrt-cu12": "for CUDA 12 torch; 'star-deploy[tensorrt-cu13]' for CUDA 13, on a machine with an NVIDIA GPU",
}
"""What an install without the extra can still do."""


def install_hint(module: str) -> str:
    """``pip install 'star-deploy[extra]'`` for the extra that provides ``module``."""
    return f"pip install 'star-deploy[{EXTRAS[module][1]}]'"


def missing_extra(exc: BaseException, what: str) -> BackendUnavailableError | None:
    """The error to show for ``exc`` when it is a module of an extra that is not installed, else None."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    module = exc.name.split(".")[0]
    if module not in EXTRAS:
        return None
    name, extra = EXTRAS[module]
    note = f" ({NOTES[extra]})" if extra in NOTES else ""
    return BackendUnavailableError(f"{what} needs {name}: {install_hint(module)}{note}")


def require(module: str, what: str) -> None:
    """Refuse work that needs ``module`` (of an extra) on an install without it, saying how to get it."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        error = missing_extra(exc, what)
        if error is None:
            raise
        raise error from None


def require_installed(module: str, what: str) -> None:
    """Like ``require``, without importing ``module``: a cheap check before anything loads."""
    if importlib.util.find_spec(module) is None:
        raise missing_extra(ModuleNotFoundError(name=module), what)  # type: ignore[misc]


def require_torch(what: str) -> None:
    """Refuse work that needs PyTorch on an install without it, saying how to get it."""
    require("torch", what)
