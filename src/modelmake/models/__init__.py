"""What modelmake knows about models: families, sources, the tiny fixture, GGUF, AWQ on CPU,
the ONNX LoRA pass, decode timing."""
