"""Execution: the model repository and, per model version, the runner that validates requests and
runs them on ONNX Runtime instances."""
