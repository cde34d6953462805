"""PNG images for HTTP responses: bytes with the generation settings in text chunks, or base64 of them."""

from __future__ import annotations

import base64

import numpy as np

from ..files.images import png_bytes


def b64_png(pixels: np.ndarray, text: dict[str, str] | None = None, compress_level: int = 6) -> str:
    """``png_bytes`` as a base64 string, for JSON and server-sent events."""
    return base64.b64encode(png_bytes(pixels, text, compress_level)).decode("ascii")
