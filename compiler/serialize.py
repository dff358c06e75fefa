"""The IR as a self-contained ``ModelProto``, for libraries that take protos, not files.

onnxruntime (from bytes), TVM's importer and onnxsim all need the weights *inside* the proto:
an in-memory proto cannot refer to external-data files. The model itself is never touched:
memory-mapped weights are read into a clone.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

__all__ = ["proto_with_weights"]


def proto_with_weights(model: ir.Model) -> onnx.ModelProto:
    """``model`` serialized with every external tensor loaded into memory (a copy)."""
    return ir.to_proto(ir.external_data.load_to_model(model.clone()))
