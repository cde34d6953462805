"""PyTorch -> ONNX export of the five graphs, the manifest, and TensorRT-readiness checks."""
