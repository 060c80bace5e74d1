"""Network definitions and inference backends (torch, ONNX Runtime, TensorRT)."""
