"""Turnout: a model-serving gateway speaking the Open Inference Protocol on ONNX Runtime."""

__version__ = "0.1.0"
