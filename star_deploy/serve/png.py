"""PNG encoding with the generation settings in text chunks (Pillow's PngInfo)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo


def encode_png(pixels: np.ndarray, text: dict[str, str] | None = None, compress_level: int = 6) -> bytes:
    """An RGB PNG of ``pixels`` (H, W, 3) uint8 with one iTXt chunk per entry of ``text``."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def b64_png(pixels: np.ndarray, text: dict[str, str] | None = None, compress_level: int = 6) -> str:
    """``encode_png`` as a base64 string, for JSON and server-sent events."""
    return base64.b64encode(encode_png(pixels, text, compress_level)).decode("ascii")
