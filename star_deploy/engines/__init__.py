"""ONNX -> TensorRT: optimization profiles, buffer plans, plan sidecars, builder and GPU validation."""
