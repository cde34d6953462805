"""The built-in demo STAR: a small model trained on synthetic coloured shapes (128 px).

Only what the runtime reads ships here: the weights and their ONNX export. Its training lives in
``tools/demo_training`` (outside the package).
"""

from __future__ import annotations

from pathlib import Path

DEMO_WEIGHTS = Path(__file__).resolve().parent / "weights"
"""The demo release folder (release layout: CLIP/, vae.safetensors, star.safetensors)."""

DEMO_RESOLUTION = 128
"""The demo draws 128x128 images (scales 1, 2, 3, 4, 6, 8)."""

DEMO_GRAPHS = Path(__file__).resolve().parent / "graphs"
"""The demo exported to ONNX (fp32): what the base install runs with ONNX Runtime, no torch needed.

Made by ``star-deploy export --out star_deploy/demo/graphs`` from ``DEMO_WEIGHTS``;
``tests/test_torch_free.py`` checks that both give the same tokens."""
