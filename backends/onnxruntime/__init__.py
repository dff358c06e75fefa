"""The reference runtime (onnxruntime) and the writer of optimized ``.onnx`` files."""

from backends.onnxruntime.reference import ReferenceSession, run_reference
from backends.onnxruntime.writer import save_model

__all__ = ["ReferenceSession", "run_reference", "save_model"]
