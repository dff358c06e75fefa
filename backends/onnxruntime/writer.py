"""Writes an ``onnx_ir.Model`` as an ``.onnx`` file that onnxruntime runs.

Weights go to ``<name>.data`` beside the model once they pass ``external_threshold`` bytes in
total, so a model larger than protobuf's 2 GiB limit still saves.
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
    total = sum(
        v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None
    )
    if total <= external_threshold:
        ir.save(model, path)
        return [path]
    data_name = path.name + ".data"
    ir.save(model, path, external_data=data_name)
    return [path, path.with_name(data_name)]
