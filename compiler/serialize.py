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
    """``model`` serialized with every external tensor's bytes inside the proto.

    The clone's initializers get in-memory views of the external tensors (read through their
    memory maps; ``to_proto`` copies the bytes). ``onnx_ir.external_data.load_to_model`` is not
    used: it *releases* each external tensor, which the clone shares with ``model``, and fails
    while any numpy view of the mapped weights is alive.
    """
    clone = model.clone()
    for graph in (clone.graph, *clone.graph.subgraphs()):
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name, dtype=tensor.dtype)
    return ir.to_proto(clone)
