"""Training of the built-in demo STAR (synthetic coloured shapes, 128 px); not shipped in the wheel.

The package keeps only what the runtime reads: the weights in ``star_deploy/demo/weights`` and their
ONNX export in ``star_deploy/demo/graphs``. Run from the repository root:
``python -m tools.demo_training.train --help``.
"""
