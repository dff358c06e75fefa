"""Writes an ``onnx_ir.Model`` as an ``.onnx`` file that onnxruntime runs.

Weights go to ``<name>.data`` beside the model once they pass ``external_threshold`` bytes in
total, so a model larger than protobuf's 2 GiB limit still saves, and whenever a weight is still
read from another model's external data: the saved model never points outside its own folder.
"""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir

__all__ = ["save_model"]

DEFAULT_EXTERNAL_THRESHOLD = 256 << 20


def save_model(
    model: ir.Model, path: str | Path, *, external_threshold: int = DEFAULT_EXTERNAL_THRESHOLD
) -> list[Path]:
    """Saves ``model`` to ``path``; returns the files written (the model and any data file)."""
    path = Path(path)
    tensors = [
        v.const_value for v in model.graph.initializers.values() if v.const_value is not None
    ]
    total = sum(t.nbytes for t in tensors)
    # A tensor still read from another file (a source model's external data) is copied into
    # this model's own data file: saved inline, onnx_ir would keep a reference to that file.
    borrowed = any(isinstance(t, ir.ExternalTensor) for t in tensors)
    if total <= external_threshold and not borrowed:
        ir.save(model, path)
        return [path]
    data_name = path.name + ".data"
    ir.save(model, path, external_data=data_name)
    return [path, path.with_name(data_name)]
