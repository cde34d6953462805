"""The built-in demo STAR: a small model trained on synthetic coloured shapes (128 px)."""

from __future__ import annotations

from pathlib import Path

DEMO_WEIGHTS = Path(__file__).resolve().parent / "weights"
"""The demo release folder (official layout: CLIP/, vae.pth, star.pth)."""

DEMO_RESOLUTION = 128
"""The demo draws 128x128 images (scales 1, 2, 3, 4, 6, 8)."""
