"""A wrong pass from a separate package: what ``python -m compiler bisect`` must catch."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


class PerturbWeightPass(ir.passes.InPlacePass):
    """Adds ``delta`` to the constant weight of the first node whose op is ``op`` — or of the
    node named ``node``, when given (a bug).

    Claims to be lossless (no ``tolerance``), so any drift it causes is beyond the default
    tolerance. The weight is replaced by a new tensor, never written in place.
    """

    name = "perturb-weight"

    def __init__(self, *, delta: float = 0.5, op: str = "MatMul", node: str = "") -> None:
        super().__init__()
        self.delta = delta
        self.op = op
        self.node = node

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        matches = [
            node
            for node in model.graph
            if node.op_type == self.op and (not self.node or node.name == self.node)
        ]
        for node in matches[:1]:
            for value in node.inputs:
                if value is not None and value.const_value is not None:
                    array = value.const_value.numpy()
                    value.const_value = ir.tensor(
                        (array + np.asarray(self.delta, array.dtype)).astype(array.dtype),
                        name=value.name,
                    )
                    return ir.passes.PassResult(model, True)
        return ir.passes.PassResult(model, False)
