"""Synthetic captioned shapes: one coloured shape on a plain background, rendered on the fly.

Everything is seeded. A fixed fifth of the colour x shape x background combinations is held
out of training (``HELD_OUT``) so that tests can check that the demo model composes words it
has only seen apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 128

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
"""Named colours (RGB 0-255): the corners of the RGB cube.

Every channel is at 0 or 255 on purpose. The VAR decoder ends in GroupNorm(32 groups), which
at a width of 32 channels normalizes each channel per image and so erases the absolute level
of flat regions; saturated channels only need the right sign, which survives normalization,
and the final clamp to [-1, 1] makes them exact.
"""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 18.0, "medium": 26.0, "large": 34.0}
"""Half-extent of a shape in pixels, by size word."""

POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}
"""Named positions as (row, column) cells of a 3x3 grid."""

GRID = (34.0, 64.0, 94.0)
JITTER = 4.0

Combo = tuple[str, str, str]
"""(shape colour, shape, background colour)."""


def _all_combos() -> list[Combo]:
    names = list(COLOURS)
    return [
        (c, s, b) for ci, c in enumerate(names) for si, s in enumerate(SHAPES) for bi, b in enumerate(names) if c != b
    ]


def _is_held_out(colour: str, shape: str, background: str) -> bool:
    names = list(COLOURS)
    return (names.index(colour) + 3 * SHAPES.index(shape) + 7 * names.index(background)) % 5 == 0


ALL_COMBOS: tuple[Combo, ...] = tuple(_all_combos())
HELD_OUT: tuple[Combo, ...] = tuple(c for c in ALL_COMBOS if _is_held_out(*c))
"""Combinations never shown in training: one fifth, balanced over colours, shapes and backgrounds."""
TRAIN_COMBOS: tuple[Combo, ...] = tuple(c for c in ALL_COMBOS if not _is_held_out(*c))


@dataclass(frozen=True)
class Scene:
    """What one image shows; ``cx``, ``cy``, ``radius`` in pixels."""

    colour: str
    shape: str
    background: str
    size: str
    position: str
    cx: float
    cy: float
    radius: float


def sample_scene(rng: np.random.Generator, combos: tuple[Combo, ...] = TRAIN_COMBOS) -> Scene:
    """A random scene whose colour/shape/background combination is one of ``combos``."""
    colour, shape, background = combos[rng.integers(len(combos))]
    size = str(rng.choice(list(SIZES)))
    position = str(rng.choice(list(POSITIONS))) if rng.random() < 0.6 else "center"
    return place(colour, shape, background, size, position, rng)


def place(colour: str, shape: str, background: str, size: str, position: str, rng: np.random.Generator) -> Scene:
    """A scene with jittered centre and radius that stays inside the image."""
    row, col = POSITIONS[position]
    radius = SIZES[size] + rng.uniform(-2.0, 2.0)
    lo, hi = radius + 1.0, IMAGE_SIZE - radius - 1.0
    cx = float(np.clip(GRID[col] + rng.uniform(-JITTER, JITTER), lo, hi))
    cy = float(np.clip(GRID[row] + rng.uniform(-JITTER, JITTER), lo, hi))
    return Scene(colour, shape, background, size, position, cx, cy, float(radius))


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Distance inside the shape's edge (positive inside) on a pixel grid centred on the shape."""
    if shape == "circle":
        return r - np.hypot(dx, dy)
    if shape == "square":
        return 0.85 * r - np.maximum(np.abs(dx), np.abs(dy))
    top, bottom = -r, 0.8 * r
    base = bottom - dy
    slope = np.hypot(bottom - top, r)
    side = ((bottom - top) * (r - np.abs(dx)) - r * (bottom - dy)) / slope
    return np.minimum(base, side)


def render(scene: Scene) -> np.ndarray:
    """The scene as a float32 image (H, W, 3) in [0, 1], with anti-aliased edges."""
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5
    dist = _signed_distance(scene.shape, xs - scene.cx, ys - scene.cy, scene.radius)
    alpha = np.clip(dist + 0.5, 0.0, 1.0)[..., None]
    fg = np.asarray(COLOURS[scene.colour], np.float32) / 255.0
    bg = np.asarray(COLOURS[scene.background], np.float32) / 255.0
    return (alpha * fg + (1.0 - alpha) * bg).astype(np.float32)


SIZE_WORDS = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium", "medium-sized"),
    "large": ("large", "big", "huge"),
}
OMIT_SIZE = {"small": 0.0, "medium": 0.6, "large": 0.4}
POSITION_WORDS = {
    "top left": ("in the top left corner", "at the top left", "in the upper left"),
    "top": ("at the top", "near the top", "in the top middle"),
    "top right": ("in the top right corner", "at the top right", "in the upper right"),
    "left": ("on the left", "on the left side", "at the left"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "on the right side", "at the right"),
    "bottom left": ("in the bottom left corner", "at the bottom left", "in the lower left"),
    "bottom": ("at the bottom", "near the bottom", "in the bottom middle"),
    "bottom right": ("in the bottom right corner", "at the bottom right", "in the lower right"),
}
TEMPLATES = (
    "{obj}{pos} on a {bg} background",
    "{obj}{pos} against a {bg} background",
    "{bg} backdrop with {obj}{pos}",
    "{obj}{pos}, {bg} background",
    "{bg} background, {obj}{pos}",
    "a picture of {obj}{pos} on {bg}",
    "{obj} drawn{pos} on a plain {bg} background",
    "simple {bg} image with {obj}{pos}",
    "{obj}{pos} on {bg}",
    "an image of {obj}{pos} on a {bg} background",
)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A natural-language description of ``scene``; centred, unsized shapes may go unmentioned."""
    words = [scene.colour, scene.shape]
    if rng.random() >= OMIT_SIZE[scene.size]:
        words.insert(0, str(rng.choice(SIZE_WORDS[scene.size])))
    obj = _article(" ".join(words))
    pos = ""
    if scene.position != "center" or rng.random() < 0.4:
        pos = " " + str(rng.choice(POSITION_WORDS[scene.position]))
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return template.format(obj=obj, pos=pos, bg=scene.background)


def nearest_colour(rgb: np.ndarray) -> str:
    """The named colour closest (Euclidean, 0-1 RGB) to ``rgb`` (3,)."""
    names = list(COLOURS)
    table = np.asarray([COLOURS[n] for n in names], np.float32) / 255.0
    return names[int(np.argmin(((table - np.asarray(rgb, np.float32)) ** 2).sum(axis=1)))]


def make_scenes(count: int, seed: int, combos: tuple[Combo, ...] = TRAIN_COMBOS) -> list[Scene]:
    """``count`` scenes from a generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, combos) for _ in range(count)]


def render_batch(scenes: list[Scene]) -> np.ndarray:
    """Images (N, 3, H, W) float32 in [0, 1]."""
    return np.stack([render(s).transpose(2, 0, 1) for s in scenes])
