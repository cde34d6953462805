"""Benchmarks: every backend against the official-style baseline and the compute floor."""

BASELINE = "torch-eager"
TORCH_GRAPHS = "torch-cuda-graphs"
BENCH_BACKENDS = (BASELINE, "torch", TORCH_GRAPHS, "onnxruntime", "onnxruntime-int8", "tensorrt")
"""Backend names ``star-deploy bench --backends`` takes."""
