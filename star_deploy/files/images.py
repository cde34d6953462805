"""Images as users get them: PIL images, uint8 arrays, and PNG files with their settings in text chunks."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounded to nearest."""
    pixels = np.rint(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * np.float32(255.0))
    return pixels.astype(np.uint8).transpose(1, 2, 0)


def to_pil(image: np.ndarray) -> Image.Image:
    """(3, H, W) float in [0, 1] -> an RGB PIL image."""
    return Image.fromarray(to_uint8(image), mode="RGB")


def png_info(text: Mapping[str, str]) -> PngImagePlugin.PngInfo:
    """One UTF-8 iTXt chunk per entry of ``text``."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_itxt(key, value)
    return info


def png_bytes(pixels: np.ndarray, text: Mapping[str, str] | None = None, compress_level: int = 6) -> bytes:
    """An RGB PNG of ``pixels`` (H, W, 3) uint8, ``text`` in its chunks, in memory."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(
        buffer, format="PNG", pnginfo=png_info(text or {}), compress_level=compress_level
    )
    return buffer.getvalue()


def write_png(path: Path, image: Image.Image, text: Mapping[str, str]) -> None:
    """Write ``image`` to ``path``, ``text`` in its chunks (callers publish it atomically, see outputs.py)."""
    image.save(path, format="PNG", pnginfo=png_info(text))


def read_png(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """Pixels (H, W, 3) uint8 and the text chunks of a PNG."""
    with Image.open(path) as img:
        img.load()
        return np.asarray(img.convert("RGB")).copy(), {k: str(v) for k, v in img.text.items()}
