"""SmoothQuant-style outlier migration for W8A8: move activation outliers into the weights.

A per-tensor int8 grid for ``x`` has to cover its largest channel; transformer activations have a
few channels far larger than the rest (BERT's LayerNorm outputs, GELU outputs), so every other
channel is left with a handful of steps. For ``y = x · W`` and any positive ``s`` (one factor per
input channel ``k``)::

    y = (x ⊘ s) · (diag(s) W)                                    (exact in real arithmetic)

With ``s_k = max|x_k|^α / max_n |W_kn|^(1−α)`` (Xiao et al., SmoothQuant, 2023) the activation
channels become even (the division flattens the outliers) while the weights — quantized per
output channel — absorb the factor where they have room. ``α`` sets the balance: 0 leaves the
activations alone, 1 moves all their range into the weights.

``x ⊘ s`` is folded into the producer when it is a ``LayerNormalization`` with constant scale
and bias whose output only feeds the smoothed matmuls (its scale and bias are divided by ``s``:
zero cost); otherwise a ``Mul(x, 1/s)`` is inserted in front of those matmuls (one elementwise op
that both runtimes fuse into the activation quantizer). Matmuls that share an input share ``s``,
computed from the largest of their weights.

Preconditions: ``max|x_k|`` from calibration data (:func:`compiler.calibration.input_gram_matrices`)
measured on the model being smoothed; weights given as ``[N, K]`` float32 rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import onnx_ir as ir

from compiler.ir_utils import add_initializer, drop_unused

__all__ = ["smooth_inputs", "smoothing_factors"]

# Factors are kept within [1/LIMIT, LIMIT]: a dead channel (max |x| = 0) must not produce 0 or inf.
LIMIT = 1e4


class Target(Protocol):
    """A matmul to smooth (``passes.quantize.weight_only._Target``)."""

    node: ir.Node
    weight: np.ndarray  # [N, K]
    sources: list[ir.Value]


def smoothing_factors(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """``s_k = max|x_k|^α / max|W_k|^(1−α)`` (float32, ``[K]``), 1 where a channel is dead."""
    x_max = np.asarray(x_max, np.float64)
    w_max = np.asarray(w_max, np.float64)
    alive = (x_max > 0) & (w_max > 0)
    s = np.ones_like(x_max)
    s[alive] = x_max[alive] ** alpha / w_max[alive] ** (1.0 - alpha)
    return np.clip(s, 1.0 / LIMIT, LIMIT).astype(np.float32)


def smooth_inputs(
    graph: ir.Graph, targets: Sequence[Target], x_max: Mapping[str, np.ndarray], alpha: float
) -> dict[str, dict]:
    """Smooths every target's input in place (the graph stays equivalent in float arithmetic);
    returns per node name ``{"smoothing": "layernorm" | "mul", "alpha", "input_max_before",
    "input_max_after"}``. Targets whose input has no statistics are left alone."""
    groups: dict[str, list[Target]] = {}
    for target in targets:
        name = target.node.inputs[0].name
        if name in x_max:
            groups.setdefault(name, []).append(target)
    records: dict[str, dict] = {}
    for name, members in groups.items():
        w_max = np.max([np.abs(t.weight).max(axis=0) for t in members], axis=0)
        s = smoothing_factors(x_max[name], w_max, alpha)
        how = _divide_input(graph, members, s)
        for target in members:
            _scale_weight(graph, target, s)
        record = {
            "smoothing": how,
            "alpha": alpha,
            "input_max_before": float(np.max(x_max[name])),
            "input_max_after": float(np.max(x_max[name] / s)),
        }
        records.update({t.node.name: record for t in members})
    return records


def _divide_input(graph: ir.Graph, members: Sequence[Target], s: np.ndarray) -> str:
    """Makes the members read ``x ⊘ s``: folded into a LayerNormalization, or a new ``Mul``."""
    x = members[0].node.inputs[0]
    nodes = {id(t.node) for t in members}
    producer = x.producer()
    only_members = all(id(user) in nodes for user, _ in x.uses()) and not x.is_graph_output()
    if only_members and _fold_into_layernorm(graph, producer, s):
        return "layernorm"
    inverse = add_initializer(graph, f"{x.name}_smooth_inv", (1.0 / s).astype(np.float32))
    mul = ir.node("Mul", [x, inverse])
    mul.outputs[0].name = f"{x.name}_smoothed"
    mul.outputs[0].shape, mul.outputs[0].dtype = x.shape, x.dtype
    first = next(node for node in graph if id(node) in nodes)
    graph.insert_before(first, mul)
    for target in members:
        target.node.replace_input_with(0, mul.outputs[0])
    return "mul"


def _fold_into_layernorm(graph: ir.Graph, producer: ir.Node | None, s: np.ndarray) -> bool:
    """``LayerNormalization(X, γ, β)`` over the last axis → ``(X, γ ⊘ s, β ⊘ s)``."""
    if producer is None or producer.op_type != "LayerNormalization" or producer.domain != "":
        return False
    if producer.attributes.get_int("axis", -1) not in (-1, len(producer.inputs[0].shape or ()) - 1):
        return False
    params = producer.inputs[1:3]
    if any(p is None or p.const_value is None for p in params):
        return False
    if any(p.const_value.dtype != ir.DataType.FLOAT for p in params):
        return False
    for index, old in enumerate(params, start=1):
        divided = old.const_value.numpy() / s
        new = add_initializer(graph, f"{old.name}_smoothed", divided.astype(np.float32))
        producer.replace_input_with(index, new)
        drop_unused(graph, [old])
    return True


def _scale_weight(graph: ir.Graph, target: Target, s: np.ndarray) -> None:
    """``W ← diag(s) W``: a new initializer in the node's own layout; ``target.weight`` too."""
    node = target.node
    target.weight = np.ascontiguousarray(target.weight * s[None, :])
    transposed = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
    layout = target.weight if transposed else target.weight.T
    stem = target.sources[-1].name or node.name
    new = add_initializer(graph, f"{stem}_smoothed", layout)
    node.replace_input_with(1, new)
    drop_unused(graph, list(target.sources))
    target.sources = [new]
