"""Helpers the ``prune`` modes share: constant weights of ``MatMul``/``Gemm`` projections, the
records key, and slicing a constant along an axis without touching tensors other nodes read.

Slicing never writes the old tensor (the pass manager's rollback keeps it): a new tensor replaces
it, in place when only the pruned block reads the value, else in a new initializer that only the
block's nodes read (copy on write).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from compiler.ir_utils import add_initializer, read_records

__all__ = [
    "RECORD_KEY",
    "Linear",
    "const",
    "linear",
    "prune_records",
    "replace_tensor",
    "slice_constant",
]

RECORD_KEY = "compiler.prune"


def prune_records(model: ir.Model) -> list[dict]:
    """The per-block records the ``prune`` pass left in ``model``'s metadata."""
    return read_records(model, RECORD_KEY)


@dataclasses.dataclass
class Linear:
    """A MatMul/Gemm with a constant weight, and which weight axis holds the pruned features."""

    node: ir.Node
    weight: ir.Value
    feature_axis: int  # axis of ``weight`` indexed by the pruned features
    bias: ir.Value | None = None  # Gemm C, indexed by output feature (output side only)


def const(value: ir.Value | None) -> np.ndarray | None:
    """The constant array of ``value``, or None when it is computed at run time."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def linear(node: ir.Node, *, as_input: bool) -> Linear | None:
    """``node`` as a projection whose output (``as_input=False``) or input (``as_input=True``)
    features are pruned; None unless it is a MatMul/Gemm with a 2-D constant initializer weight."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
        return None
    weight = node.inputs[1]
    w = const(weight)
    if w is None or w.ndim != 2 or not weight.is_initializer():
        return None
    trans_b = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        return None
    # MatMul/Gemm(transB=0): weight [in, out]; Gemm(transB=1): weight [out, in].
    out_axis = 0 if trans_b else 1
    axis = (1 - out_axis) if as_input else out_axis
    bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
    if bias is not None and as_input:
        bias = None  # indexed by the outputs, which do not change
    return Linear(node, weight, axis, bias)


def replace_tensor(value: ir.Value, array: np.ndarray) -> None:
    """A new tensor for ``value`` (the old one is never written: rollback keeps it)."""
    value.const_value = ir.tensor(np.ascontiguousarray(array), name=value.name)
    value.shape = ir.Shape(array.shape)


def slice_constant(
    graph: ir.Graph, value: ir.Value, keep: np.ndarray, axis: int, members: set[int]
) -> None:
    """Keeps entries ``keep`` of ``value`` along ``axis`` — in place when only ``members``
    (node ids) read it, else in a new initializer that the members read instead."""
    array = np.take(const(value), keep, axis=axis)
    users = value.uses()
    if all(id(user) in members for user, _ in users) and not value.is_graph_output():
        replace_tensor(value, array)
        return
    copy = add_initializer(graph, f"{value.name}_pruned", array)
    for user, index in users:
        if id(user) in members:
            user.replace_input_with(index, copy)
