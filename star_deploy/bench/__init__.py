"""Benchmarks: every backend against the official-style baseline and the compute floor."""

BASELINE = "torch-eager"
TORCH_GRAPHS = "torch-cuda-graphs"
ORT_PRECISIONS = {
    "onnxruntime": "fp32",
    "onnxruntime-int8": "int8",
    "onnxruntime-int8-dynamic": "int8-dynamic",
    "onnxruntime-int8-mixed": "int8-mixed",
}
"""ONNX Runtime bench backends and the artefact precision each runs."""
BENCH_BACKENDS = (BASELINE, "torch", TORCH_GRAPHS, *ORT_PRECISIONS, "tensorrt")
"""Backend names ``star-deploy bench --backends`` takes."""
