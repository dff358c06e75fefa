"""``prune``: remove whole FFN neurons (structured) or single weights (unstructured).

**Structured** (``mode=neurons``, the default). An FFN block is found from its *down* projection
``D`` — a ``MatMul``/``Gemm`` with a constant weight whose reduction axis has ``F`` entries — by
walking back from ``D``'s input through elementwise ops (activations, gates, bias adds, scalar
constants) to the *up* projections ``P₁ … Pₘ`` (``MatMul``/``Gemm`` with constant weights producing
``F`` features): GPT-2's ``fc → GELU → proj``, Llama's ``down(silu(gate(x)) · up(x))``. The block
must be closed: no value inside it is read outside it, and every weight is read only there.
Neuron ``j`` is output column ``j`` of every ``Pᵢ`` (and of its bias), entry ``j`` of any
per-feature constant in between, and input row ``j`` of ``D``; removing it changes nothing else,
so the pruned model computes exactly the unpruned model with those neurons' outputs set to 0.

Scores (``score=``), larger is kept:

* ``magnitude``: ``‖D[j, :]‖ · Σᵢ ‖Pᵢ[:, j]‖``;
* ``wanda`` (activation-aware, after Wanda, Sun et al. 2023): ``‖D[j, :]‖ · mean |h_j|`` with
  ``h`` the input of ``D`` on the calibration data — what neuron ``j`` actually contributes.

``ratio`` of the neurons of every block are removed, rounded so that the kept count is a
multiple of ``multiple`` (vector-friendly shapes). Weights shrink physically: parameter count,
artifact bytes and FLOPs drop with them.

**Unstructured** (``mode=unstructured``): in every MatMul/Gemm weight, the ``ratio`` smallest
magnitudes become 0. Dense kernels do not skip zeros, so this saves nothing at run time or in the
artifact; the report says so and gives the sparsity, for use with a sparse backend or as a
compression-friendly preprocessing.

Records per block (``compiler.prune`` metadata): the down node, ``F``, neurons kept, score.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir

from compiler.errors import InputError
from compiler.ir_utils import add_initializer, read_records, write_records

__all__ = ["RECORD_KEY", "PrunePass", "prune_records"]

RECORD_KEY = "compiler.prune"

# Ops that act on each feature independently (with scalar or per-feature constant operands).
ELEMENTWISE = {
    ("", "Mul"), ("", "Add"), ("", "Sub"), ("", "Div"), ("", "Sigmoid"), ("", "Tanh"),
    ("", "Relu"), ("", "Gelu"), ("", "Erf"), ("", "Neg"), ("", "Pow"), ("", "Softplus"),
    ("", "HardSigmoid"), ("", "LeakyRelu"), ("", "Identity"),
    ("com.microsoft", "Gelu"), ("com.microsoft", "FastGelu"), ("com.microsoft", "BiasGelu"),
}  # fmt: skip


@dataclasses.dataclass
class _Linear:
    """A MatMul/Gemm with a constant weight, and which weight axis holds the FFN features."""

    node: ir.Node
    weight: ir.Value
    feature_axis: int  # axis of ``weight`` indexed by neuron
    bias: ir.Value | None = None  # Gemm C, indexed by neuron (up projections only)


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _linear(node: ir.Node, *, as_input: bool) -> _Linear | None:
    """``node`` as an up (``as_input=False``: features = outputs) or down projection."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
        return None
    weight = node.inputs[1]
    w = _const(weight)
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
        bias = None  # D's bias is indexed by its outputs, which do not change
    return _Linear(node, weight, axis, bias)


@dataclasses.dataclass
class _Block:
    down: _Linear
    ups: list[_Linear]
    inner: list[ir.Node]  # elementwise nodes between
    features: int
    per_feature: list[ir.Value]  # constants with a last axis of F (sliced with the neurons)


def _find_block(down: _Linear) -> _Block | None:
    features = _const(down.weight).shape[down.feature_axis]
    ups: list[_Linear] = []
    inner: list[ir.Node] = []
    per_feature: list[ir.Value] = []
    seen: set[int] = set()
    stack = [down.node.inputs[0]]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        node = value.producer()
        if node is None:
            return None
        up = _linear(node, as_input=False)
        if up is not None and _const(up.weight).shape[up.feature_axis] == features:
            ups.append(up)
            continue
        if (node.domain, node.op_type) not in ELEMENTWISE:
            return None
        inner.append(node)
        for operand in node.inputs:
            if operand is None:
                continue
            array = _const(operand)
            if array is None:
                stack.append(operand)
            elif array.size == 1:
                continue
            elif array.shape[-1] == features and array.size == features:
                if not operand.is_initializer():
                    return None
                per_feature.append(operand)
            else:
                return None
    if not ups:
        return None
    block = _Block(down, ups, inner, features, per_feature)
    members = {id(n) for n in [*inner, *(u.node for u in ups), down.node]}
    produced = [v for n in [*inner, *(u.node for u in ups)] for v in n.outputs]
    for value in produced:  # closed: nothing outside the block reads inside values
        if value.is_graph_output() or any(id(user) not in members for user, _ in value.uses()):
            return None
    return block


def prune_records(model: ir.Model) -> list[dict]:
    """The per-block records the ``prune`` pass left in ``model``'s metadata."""
    return read_records(model, RECORD_KEY)


class PrunePass(ir.passes.InPlacePass):
    """Removes FFN neurons (structured) or zeroes small weights (unstructured)."""

    name = "prune"
    lossy = True

    def __init__(
        self,
        *,
        ratio: float = 0.25,
        mode: Literal["neurons", "unstructured"] = "neurons",
        score: Literal["magnitude", "wanda"] = "magnitude",
        multiple: int = 32,
        samples: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise InputError(f"prune: ratio must be in [0, 1), not {ratio}")
        if multiple < 1:
            raise InputError(f"prune: multiple must be >= 1, not {multiple}")
        self.ratio, self.mode, self.score, self.multiple = ratio, mode, score, multiple
        self.samples = samples
        self.context = None  # set by the pass manager: calibration data (score=wanda)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.ratio == 0.0:
            return ir.passes.PassResult(model, modified=False)
        if self.mode == "unstructured":
            return self._unstructured(model)
        blocks = []
        for node in model.graph:
            down = _linear(node, as_input=True)
            block = _find_block(down) if down is not None else None
            if block is not None:
                blocks.append(block)
        if not blocks:
            return ir.passes.PassResult(model, modified=False)
        activity = self._activity(model, blocks)
        records = prune_records(model)
        for block in blocks:
            keep = self._keep(block, activity.get(block.down.node.inputs[0].name))
            _shrink(model.graph, block, keep)
            records.append(
                {
                    "node": block.down.node.name,
                    "features": block.features,
                    "kept": len(keep),
                    "score": self.score,
                    "ups": [u.node.name for u in block.ups],
                }
            )
        write_records(model, RECORD_KEY, records)
        return ir.passes.PassResult(model, modified=True)

    def _activity(self, model: ir.Model, blocks: list[_Block]) -> dict[str, np.ndarray]:
        if self.score != "wanda":
            return {}
        from compiler.calibration import calibration_feeds, input_gram_matrices

        feeds = calibration_feeds(self.context, "prune(score=wanda)", self.samples)
        names = sorted({b.down.node.inputs[0].name for b in blocks})
        stats = input_gram_matrices(model, feeds, names)
        return {name: s.abs_mean for name, s in stats.items()}

    def _keep(self, block: _Block, activity: np.ndarray | None) -> np.ndarray:
        down = _const(block.down.weight)
        out_norm = np.linalg.norm(np.moveaxis(down, block.down.feature_axis, 0), axis=1)
        if activity is not None:
            scores = out_norm * activity
        else:
            in_norm = sum(
                np.linalg.norm(np.moveaxis(_const(u.weight), u.feature_axis, 0), axis=1)
                for u in block.ups
            )
            scores = out_norm * in_norm
        count = block.features * (1.0 - self.ratio)
        count = max(self.multiple, round(count / self.multiple) * self.multiple)
        count = min(count, block.features)
        return np.sort(np.argsort(-scores, kind="stable")[:count])

    def _unstructured(self, model: ir.Model) -> ir.passes.PassResult:
        records = prune_records(model)
        changed = False
        for node in model.graph:
            linear = _linear(node, as_input=True)
            if linear is None or len(linear.weight.uses()) != 1:
                continue
            w = _const(linear.weight)
            cut = np.quantile(np.abs(w), self.ratio)
            pruned = np.where(np.abs(w) <= cut, np.float32(0), w).astype(w.dtype)
            _replace(linear.weight, pruned)
            records.append(
                {
                    "node": node.name,
                    "mode": "unstructured",
                    "sparsity": float((pruned == 0).mean()),
                    "note": "zeros are stored and multiplied: no size or speed change",
                }
            )
            changed = True
        write_records(model, RECORD_KEY, records)
        return ir.passes.PassResult(model, modified=changed)


def _replace(value: ir.Value, array: np.ndarray) -> None:
    """A new tensor for ``value`` (the old one is never written: rollback keeps it)."""
    value.const_value = ir.tensor(np.ascontiguousarray(array), name=value.name)
    value.shape = ir.Shape(array.shape)


def _slice(graph: ir.Graph, value: ir.Value, keep: np.ndarray, axis: int, members: set) -> None:
    """Keeps entries ``keep`` of ``value`` along ``axis`` — in place when only the block reads
    it, else in a new initializer that the block's nodes read instead (copy on write)."""
    array = np.take(_const(value), keep, axis=axis)
    users = value.uses()
    if all(id(user) in members for user, _ in users) and not value.is_graph_output():
        _replace(value, array)
        return
    copy = add_initializer(graph, f"{value.name}_pruned", array)
    for user, index in users:
        if id(user) in members:
            user.replace_input_with(index, copy)


def _shrink(graph: ir.Graph, block: _Block, keep: np.ndarray) -> None:
    members = {id(n) for n in [*block.inner, *(u.node for u in block.ups), block.down.node]}
    down = block.down
    _slice(graph, down.weight, keep, down.feature_axis, members)
    for up in block.ups:
        _slice(graph, up.weight, keep, up.feature_axis, members)
        if up.bias is not None:
            _slice(graph, up.bias, keep, _const(up.bias).ndim - 1, members)
    for value in block.per_feature:
        _slice(graph, value, keep, _const(value).ndim - 1, members)
    for node in [*(u.node for u in block.ups), *block.inner]:
        for value in node.outputs:
            if value.shape is not None and len(value.shape) > 0:
                dims = list(value.shape)
                dims[-1] = len(keep)
                value.shape = ir.Shape(dims)
