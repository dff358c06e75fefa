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

**Attention heads** (``mode=heads``): whole heads removed, respecting grouped-query attention
(``unit=query|group``); see :mod:`passes.prune.heads`.

Records per block (``compiler.prune`` metadata): the down node, ``F``, neurons kept, score; for
heads, the O projection, head counts, the heads kept, or why a block was skipped.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir

from compiler.errors import InputError
from compiler.ir_utils import write_records
from passes.prune import heads
from passes.prune.common import (
    RECORD_KEY,
    Linear,
    const,
    linear,
    prune_records,
    replace_tensor,
    slice_constant,
)

__all__ = ["RECORD_KEY", "PrunePass", "prune_records"]

# Ops that act on each feature independently (with scalar or per-feature constant operands).
ELEMENTWISE = {
    ("", "Mul"), ("", "Add"), ("", "Sub"), ("", "Div"), ("", "Sigmoid"), ("", "Tanh"),
    ("", "Relu"), ("", "Gelu"), ("", "Erf"), ("", "Neg"), ("", "Pow"), ("", "Softplus"),
    ("", "HardSigmoid"), ("", "LeakyRelu"), ("", "Identity"),
    ("com.microsoft", "Gelu"), ("com.microsoft", "FastGelu"), ("com.microsoft", "BiasGelu"),
}  # fmt: skip


@dataclasses.dataclass
class _Block:
    down: Linear
    ups: list[Linear]
    inner: list[ir.Node]  # elementwise nodes between
    features: int
    per_feature: list[ir.Value]  # constants with a last axis of F (sliced with the neurons)


def _find_block(down: Linear) -> _Block | None:
    features = const(down.weight).shape[down.feature_axis]
    ups: list[Linear] = []
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
        up = linear(node, as_input=False)
        if up is not None and const(up.weight).shape[up.feature_axis] == features:
            ups.append(up)
            continue
        if (node.domain, node.op_type) not in ELEMENTWISE:
            return None
        inner.append(node)
        for operand in node.inputs:
            if operand is None:
                continue
            array = const(operand)
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


class PrunePass(ir.passes.InPlacePass):
    """Removes FFN neurons (structured), attention heads (``mode=heads``) or zeroes small
    weights (unstructured)."""

    name = "prune"
    lossy = True

    def __init__(
        self,
        *,
        ratio: float = 0.25,
        mode: Literal["neurons", "heads", "unstructured"] = "neurons",
        score: Literal["magnitude", "wanda"] = "magnitude",
        multiple: int = 32,
        samples: int = 0,
        unit: Literal["query", "group"] = "query",
    ) -> None:
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise InputError(f"prune: ratio must be in [0, 1), not {ratio}")
        if multiple < 1:
            raise InputError(f"prune: multiple must be >= 1, not {multiple}")
        self.ratio, self.mode, self.score, self.multiple = ratio, mode, score, multiple
        self.samples, self.unit = samples, unit
        self.context = None  # set by the pass manager: calibration data (score=wanda)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.ratio == 0.0:
            return ir.passes.PassResult(model, modified=False)
        if self.mode == "unstructured":
            return self._unstructured(model)
        if self.mode == "heads":
            return self._heads(model)
        blocks = []
        for node in model.graph:
            down = linear(node, as_input=True)
            block = _find_block(down) if down is not None else None
            if block is not None:
                blocks.append(block)
        if not blocks:
            return ir.passes.PassResult(model, modified=False)
        activity = self._activity(model, [b.down.node.inputs[0].name for b in blocks])
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

    def _activity(self, model: ir.Model, names: list[str]) -> dict[str, np.ndarray]:
        """Mean ``|x|`` per feature of the named values on the calibration data (wanda)."""
        if self.score != "wanda":
            return {}
        from compiler.calibration import calibration_feeds, input_gram_matrices

        feeds = calibration_feeds(self.context, "prune(score=wanda)", self.samples)
        stats = input_gram_matrices(model, feeds, sorted(set(names)))
        return {name: s.abs_mean for name, s in stats.items()}

    def _heads(self, model: ir.Model) -> ir.passes.PassResult:
        blocks, skipped = heads.find_attention_blocks(model.graph, self.unit)
        activity = self._activity(model, [b.out_input.name for b in blocks]) if blocks else {}
        records = prune_records(model)
        changed = False
        for block in blocks:
            scores = heads.head_scores(block, activity.get(block.out_input.name))
            kept_q, kept_kv = heads.select_heads(block, scores, self.ratio, self.unit)
            record = {
                "node": block.out.node.name,
                "mode": "heads",
                "unit": self.unit if block.group_size > 1 else "head",
                "heads": block.heads,
                "kv_heads": block.kv_heads,
                "head_dim": block.head_dim,
                "score": self.score,
            }
            if len(kept_q) == block.heads:
                record["skipped"] = f"ratio {self.ratio} removes no head of this block"
            else:
                heads.prune_block(model.graph, block, kept_q, kept_kv)
                record["heads_kept"] = kept_q.tolist()
                record["kv_heads_kept"] = kept_kv.tolist()
                record["projections"] = [s.projection.node.name for s in block.spaces]
                changed = True
            records.append(record)
        records.extend(skipped)
        write_records(model, RECORD_KEY, records)
        return ir.passes.PassResult(model, modified=changed)

    def _keep(self, block: _Block, activity: np.ndarray | None) -> np.ndarray:
        down = const(block.down.weight)
        out_norm = np.linalg.norm(np.moveaxis(down, block.down.feature_axis, 0), axis=1)
        if activity is not None:
            scores = out_norm * activity
        else:
            in_norm = sum(
                np.linalg.norm(np.moveaxis(const(u.weight), u.feature_axis, 0), axis=1)
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
            proj = linear(node, as_input=True)
            if proj is None or len(proj.weight.uses()) != 1:
                continue
            w = const(proj.weight)
            cut = np.quantile(np.abs(w), self.ratio)
            pruned = np.where(np.abs(w) <= cut, np.float32(0), w).astype(w.dtype)
            replace_tensor(proj.weight, pruned)
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


def _shrink(graph: ir.Graph, block: _Block, keep: np.ndarray) -> None:
    members = {id(n) for n in [*block.inner, *(u.node for u in block.ups), block.down.node]}
    down = block.down
    slice_constant(graph, down.weight, keep, down.feature_axis, members)
    for up in block.ups:
        slice_constant(graph, up.weight, keep, up.feature_axis, members)
        if up.bias is not None:
            slice_constant(graph, up.bias, keep, const(up.bias).ndim - 1, members)
    for value in block.per_feature:
        slice_constant(graph, value, keep, const(value).ndim - 1, members)
    for node in [*(u.node for u in block.ups), *block.inner]:
        for value in node.outputs:
            if value.shape is not None and len(value.shape) > 0:
                dims = list(value.shape)
                dims[-1] = len(keep)
                value.shape = ir.Shape(dims)
