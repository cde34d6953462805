"""PNG output: images with their generation settings in text chunks."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_file


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounded to nearest."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray, text: dict[str, str]) -> bytes:
    """An RGB PNG with one iTXt chunk (UTF-8) per entry of ``text``."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))]
    for key, value in text.items():
        chunks.append(_chunk(b"iTXt", key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value.encode("utf-8")))
    chunks.append(_chunk(b"IDAT", zlib.compress(raw, 6)))
    chunks.append(_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def read_png(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """Pixels (H, W, 3) and text chunks of a PNG written by ``save_png``."""
    data = path.read_bytes()
    pos, idat, text, size = 8, b"", {}, (0, 0)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        elif kind == b"iTXt":
            key, rest = body.split(b"\x00", 1)
            text[key.decode("latin-1")] = rest[4:].decode("utf-8")
        pos += 12 + length
    w, h = size
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + 3 * w)
    return rows[:, 1:].reshape(h, w, 3).copy(), text


def save_png(path: Path, image: torch.Tensor, text: dict[str, str]) -> None:
    """Write ``image`` (3, H, W) in [0, 1] to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(encode_png(to_uint8(image), text))
