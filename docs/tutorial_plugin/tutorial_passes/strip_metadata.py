"""A graph pass: removes the metadata an exporter leaves on nodes and on the model."""

from __future__ import annotations

import onnx_ir as ir

# What passes recorded for the build report (quantize's layers, fusion coverage): never removed.
_KEEP = "compiler."


class StripMetadataPass(ir.passes.InPlacePass):
    """Removes exporter metadata (torch.onnx stack traces, module paths) from a model.

    ``torch.onnx.export`` records on every node the Python stack trace that created it, with
    the absolute file paths of the machine that exported the model, and the module hierarchy;
    they would ship in the artifact's model.onnx. This pass deletes every metadata key that
    starts with one of ``prefixes`` (comma-separated) from the model, its graph, its functions
    and every node, subgraphs included; ``doc_strings`` also clears their doc strings. Keys
    under ``compiler.`` are kept: the build report reads them. Numerics are untouched.
    """

    name = "strip-metadata"

    def __init__(self, *, prefixes: str = "pkg.torch.,namespace", doc_strings: bool = True) -> None:
        super().__init__()
        self.prefixes = tuple(p.strip() for p in prefixes.split(",") if p.strip())
        self.doc_strings = doc_strings

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        holders: list = [model, model.graph, *ir.traversal.RecursiveGraphIterator(model.graph)]
        for function in model.functions.values():
            holders += [function, *ir.traversal.RecursiveGraphIterator(function)]
        removed = 0
        for holder in holders:
            props = holder.metadata_props
            for key in [k for k in props if k.startswith(self.prefixes)]:
                if not key.startswith(_KEEP):
                    del props[key]
                    removed += 1
            if self.doc_strings and holder.doc_string:
                holder.doc_string = None
                removed += 1
        return ir.passes.PassResult(model, modified=removed > 0)
