"""Read a generated demo image back: background colour, shape colour and shape class."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import Combo, nearest_colour

BORDER = 3
MASK_DISTANCE = 0.3
"""RGB distance (0-1 scale) from the background above which a pixel belongs to the shape."""
MIN_PIXELS = 40
SQUARE_FILL = 0.85
"""Bounding-box fill above which a blob is a square (a disc fills pi/4 of its box).

Calibrated on the demo VQVAE's reconstructions of training scenes, i.e. on shapes as its
decoder draws them: median fill 0.80 for circles, 0.90 for squares; this is the midpoint.
"""


@dataclass(frozen=True)
class Reading:
    """What an image shows according to the classifier; ``shape`` is "none" if nothing stands out."""

    colour: str
    shape: str
    background: str

    def matches(self, combo: Combo) -> tuple[bool, bool]:
        """(both colours right, shape right) against the combination asked for."""
        colour, shape, background = combo
        return (self.colour == colour and self.background == background, self.shape == shape)


def _border(img: np.ndarray) -> np.ndarray:
    b = BORDER
    return np.concatenate(
        [img[:b].reshape(-1, 3), img[-b:].reshape(-1, 3), img[:, :b].reshape(-1, 3), img[:, -b:].reshape(-1, 3)]
    )


def _extent(counts: np.ndarray) -> tuple[int, int]:
    """First and last index whose count is at least 2 (ignores stray pixels)."""
    idx = np.nonzero(counts >= 2)[0]
    return (int(idx[0]), int(idx[-1])) if idx.size else (0, len(counts) - 1)


def _shape_class(mask: np.ndarray) -> str:
    """Circle, square or triangle from the mask's fill of its bounding box and its taper."""
    y0, y1 = _extent(mask.sum(axis=1))
    x0, x1 = _extent(mask.sum(axis=0))
    box = mask[y0 : y1 + 1, x0 : x1 + 1]
    fill = box.sum() / box.size
    band = max(1, box.shape[0] // 4)
    rows = box.sum(axis=1)
    taper = rows[:band].mean() / max(rows[-band:].mean(), 1.0)
    if taper < 0.6:
        return "triangle"
    return "square" if fill > SQUARE_FILL else "circle"


def read_image(image: np.ndarray) -> Reading:
    """Classify an image (3, H, W) or (H, W, 3) in [0, 1]."""
    img = np.asarray(image, np.float32)
    if img.shape[0] == 3:
        img = img.transpose(1, 2, 0)
    bg_rgb = np.median(_border(img), axis=0)
    mask = np.linalg.norm(img - bg_rgb, axis=-1) > MASK_DISTANCE
    background = nearest_colour(bg_rgb)
    if mask.sum() < MIN_PIXELS:
        return Reading("none", "none", background)
    colour = nearest_colour(np.median(img[mask], axis=0))
    return Reading(colour, _shape_class(mask), background)
