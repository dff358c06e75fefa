"""Backends: hand the IR to a runtime. ``tvm`` compiles it; ``onnxruntime`` is the reference."""
