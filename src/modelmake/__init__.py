"""modelmake: a reproducible build graph for fine-tuned, quantized, ONNX-deployable LMs."""

__version__ = "0.1.0"
