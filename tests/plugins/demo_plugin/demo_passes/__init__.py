"""A pass from a separate package, registered through the ``compiler.passes`` entry point."""

from __future__ import annotations

import onnx_ir as ir


class TagNodesPass(ir.passes.InPlacePass):
    """Records ``demo.tag=<tag>`` in the metadata of every node whose op is ``op``.

    A harmless annotation pass: numerics are untouched, and the tag survives into the optimized
    ONNX model of an artifact, which is how the tests see that it ran.
    """

    name = "tag-nodes"

    def __init__(self, *, tag: str = "demo", op: str = "MatMul") -> None:
        super().__init__()
        self.tag = tag
        self.op = op

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in model.graph:
            if node.op_type == self.op:
                node.metadata_props["demo.tag"] = self.tag
                modified = True
        return ir.passes.PassResult(model, modified)
