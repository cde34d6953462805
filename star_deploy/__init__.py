"""star-deploy: STAR text-to-image from official checkpoints to ONNX, TensorRT and ONNX Runtime."""

__version__ = "0.1.0"
