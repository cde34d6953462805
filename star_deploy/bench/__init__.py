"""Benchmarks: every backend against the official-style baseline and the compute floor."""

BASELINE = "torch-eager"
TORCH_GRAPHS = "torch-cuda-graphs"
TORCH_COMPILED = "torch-compiled"
TORCH_COMPILED_GRAPHS = "torch-compiled-cuda-graphs"
TORCH_VARIANTS = {"torch": (False, False), TORCH_GRAPHS: (True, False), TORCH_COMPILED: (False, True)}
TORCH_VARIANTS[TORCH_COMPILED_GRAPHS] = (True, True)
"""The torch backend's bench names: (CUDA graphs, torch.compile of the step)."""
ORT_PRECISIONS = {
    "onnxruntime": "fp32",
    "onnxruntime-int8": "int8",
    "onnxruntime-int8-dynamic": "int8-dynamic",
    "onnxruntime-int8-mixed": "int8-mixed",
}
"""ONNX Runtime bench backends and the artefact precision each runs."""
BENCH_BACKENDS = (BASELINE, *TORCH_VARIANTS, *ORT_PRECISIONS, "tensorrt")
"""Backend names ``star-deploy bench --backends`` takes."""
