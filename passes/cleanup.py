"""Lossless cleanup passes, composed from the field's libraries rather than rewritten.

=====================  ==================================================================
name                   what it does (and whose code does it)
=====================  ==================================================================
``dce``                removes nodes whose outputs are unused, unused functions and opsets
                       (``onnx_ir.passes.common``)
``fold-constants``     evaluates nodes whose inputs are all constant and replaces them by
                       initializers (``onnxscript.optimizer`` constant folding; size limits
                       keep weights from being duplicated)
``cse``                merges nodes with the same op, attributes and inputs
                       (``onnx_ir.passes.common``)
``dedup-initializers`` merges initializers with equal dtype, shape and bytes
                       (``onnx_ir.passes.common``), so CSE can then merge their users
``eliminate-identity`` removes ``Identity`` nodes (``onnx_ir.passes.common``)
``infer-shapes``       ONNX shape inference, stored on the IR values (``onnx_ir.passes.common``)
``onnxsim``            onnxsim's simplifier on the serialized model (functional: a new model)
``cleanup``            identity, folding, CSE and DCE repeated until nothing changes (at most
                       ``max_rounds`` rounds), then shape inference; add ``onnxsim`` after it
                       in a pipeline to also run onnxsim
=====================  ==================================================================

All are exact: outputs are bit-identical up to float reassociation in constant folding, so they
run under the default numeric tolerance.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer._constant_folding import FoldConstantsPass

from compiler.quiet import quiet_loggers
from compiler.serialize import proto_with_weights

__all__ = [
    "CleanupPass",
    "CommonSubexpressionEliminationPass",
    "ConstantFoldingPass",
    "DeadCodeEliminationPass",
    "DeduplicateInitializersPass",
    "IdentityEliminationPass",
    "OnnxSimplifierPass",
    "ShapeInferencePass",
]


def _run_all(passes: list[ir.passes.PassBase], model: ir.Model) -> ir.passes.PassResult:
    modified = False
    for pass_ in passes:
        result = pass_(model)
        model = result.model
        modified |= result.modified
    return ir.passes.PassResult(model, modified)


class DeadCodeEliminationPass(ir.passes.InPlacePass):
    """Removes unused nodes, functions and opset imports.

    A node is unused when none of its outputs reaches a graph output (side-effect-free ops only,
    as decided by onnx_ir). Unused initializers are removed with the nodes that used them.
    """

    name = "dce"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return _run_all(
            [
                common.RemoveUnusedNodesPass(),
                common.RemoveUnusedFunctionsPass(),
                common.RemoveUnusedOpsetsPass(),
            ],
            model,
        )


class ConstantFoldingPass(ir.passes.InPlacePass):
    """Replaces nodes whose inputs are all constants by their value (onnxscript's folder).

    Inputs larger than ``input_size_limit`` elements and outputs larger than
    ``output_size_limit`` are not folded, so a weight is not copied into a transformed second
    weight; onnxscript folds ``Transpose`` at any size (the transposed weight replaces the
    original when it has no other user). ``shape_inference`` runs ONNX shape inference as it goes.
    """

    name = "fold-constants"

    def __init__(
        self,
        *,
        input_size_limit: int = 8192,
        output_size_limit: int = 262144,
        shape_inference: bool = True,
    ) -> None:
        super().__init__()
        self.input_size_limit = input_size_limit
        self.output_size_limit = output_size_limit
        self.shape_inference = shape_inference

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folder = FoldConstantsPass(
            shape_inference=self.shape_inference,
            input_size_limit=self.input_size_limit,
            output_size_limit=self.output_size_limit,
        )
        # The folder logs a warning for every node it tries and cannot evaluate; that is routine.
        with quiet_loggers("onnxscript.optimizer._constant_folding"):
            result = folder(model)
        # The folder leaves the folded nodes in place when their outputs lost all users; DCE
        # removes them so that "modified" means the graph really changed.
        cleanup = common.RemoveUnusedNodesPass()(result.model)
        return ir.passes.PassResult(result.model, result.modified or cleanup.modified)


class CommonSubexpressionEliminationPass(ir.passes.InPlacePass):
    """Merges nodes with the same op, domain, attributes and inputs (onnx_ir's CSE).

    Constant tensors up to ``size_limit`` elements are compared by value.
    """

    name = "cse"

    def __init__(self, *, size_limit: int = 10) -> None:
        super().__init__()
        self.size_limit = size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return common.CommonSubexpressionEliminationPass(size_limit=self.size_limit)(model)


class DeduplicateInitializersPass(ir.passes.InPlacePass):
    """Merges initializers with the same dtype, shape and content into one.

    Tensors are compared by a cryptographic hash of their bytes (onnx_ir's
    ``DeduplicateHashedInitializersPass``); tensors above ``size_limit`` elements are skipped.
    """

    name = "dedup-initializers"

    def __init__(self, *, size_limit: int = 1 << 26) -> None:
        super().__init__()
        self.size_limit = size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        _make_initializers_contiguous(model)
        return common.DeduplicateHashedInitializersPass(size_limit=self.size_limit)(model)


def _make_initializers_contiguous(model: ir.Model) -> None:
    """Copies numpy-backed initializers that are strided views (torch export produces some).

    onnx_ir's hashing reads the raw buffer and refuses non-contiguous arrays; the values are
    unchanged by the copy.
    """
    for value in model.graph.initializers.values():
        tensor = value.const_value
        raw = getattr(tensor, "raw", None)
        if isinstance(raw, np.ndarray) and not raw.flags.c_contiguous:
            value.const_value = ir.tensor(np.ascontiguousarray(raw), name=tensor.name)


class IdentityEliminationPass(common.IdentityEliminationPass):
    """Removes ``Identity`` nodes, renaming graph outputs back when an output was an Identity.

    onnx_ir's pass, except that ``y = Identity(x)`` is kept when both ``x`` and ``y`` are graph
    outputs: one value cannot carry two output names, and onnx_ir 1.1 renames ``x`` to ``y``,
    dropping output ``x`` (found by tests/robustness/test_lossless_properties.py).
    """

    name = "eliminate-identity"

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if (
            node.op_type == "Identity"
            and node.domain == ""
            and len(node.inputs) == 1
            and node.inputs[0] is not None
            and node.inputs[0].is_graph_output()
            and node.outputs[0].is_graph_output()
        ):
            return False
        return super()._try_eliminate_identity_node(node)


class ShapeInferencePass(ir.passes.InPlacePass):
    """Runs ONNX shape inference and stores the inferred types and shapes on the IR values.

    With ``strict=true`` an inconsistent model is an error instead of being left un-annotated.
    """

    name = "infer-shapes"

    def __init__(self, *, strict: bool = False, data_prop: bool = True) -> None:
        super().__init__()
        self.strict = strict
        self.data_prop = data_prop

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return common.ShapeInferencePass(strict_mode=self.strict, data_prop=self.data_prop)(model)


class OnnxSimplifierPass(ir.passes.FunctionalPass):
    """Runs onnxsim's simplifier (folding, shape inference, redundant-op removal) on the model.

    It works on a serialized copy, so the whole model, weights included, is held twice in memory
    while it runs: use it on models below a few GiB. Returns a new model.
    """

    name = "onnxsim"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        import onnxsim

        proto = proto_with_weights(model)
        simplified, ok = onnxsim.simplify(proto, check_n=0)
        if not ok:
            raise RuntimeError("onnxsim could not validate its simplified model")
        new_model = ir.serde.deserialize_model(simplified)
        before = (len(model.graph), len(model.graph.initializers))
        after = (len(new_model.graph), len(new_model.graph.initializers))
        return ir.passes.PassResult(new_model, before != after)


class CleanupPass(ir.passes.InPlacePass):
    """Every lossless cleanup in order, repeated until nothing changes.

    Order per round: eliminate-identity, fold-constants, dedup-initializers, cse, dce; then
    infer-shapes once at the end (so later passes see shapes).
    """

    name = "cleanup"

    def __init__(self, *, max_rounds: int = 3) -> None:
        super().__init__()
        self.max_rounds = max_rounds

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rounds = [
            IdentityEliminationPass(),
            ConstantFoldingPass(),
            DeduplicateInitializersPass(),
            CommonSubexpressionEliminationPass(),
            DeadCodeEliminationPass(),
        ]
        modified = False
        for _ in range(self.max_rounds):
            result = _run_all(rounds, model)
            modified |= result.modified
            if not result.modified:
                break
        ShapeInferencePass()(model)
        return ir.passes.PassResult(model, modified)
