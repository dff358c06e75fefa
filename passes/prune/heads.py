"""``prune(mode=heads)``: remove whole attention heads, respecting grouped-query attention.

**Finding a block.** An attention core is ``MatMul(Softmax(f(MatMul(Q, Kᵀ))), V)`` where ``f`` is
elementwise (scale, additive mask broadcast over heads); its scores ``[B, H, S, S]`` give the
query head count ``H`` (axis 1). From there the pass follows the *head axis* through the graph:

* back from ``Q``, ``K`` and ``V`` through ``Transpose``, elementwise ops whose other operand is
  broadcast over heads (rotary ``cos``/``sin``, scalars), ``Slice``/``Concat`` along other axes
  (rotary's half rotation), and the GQA repetition ``Reshape(Expand(Unsqueeze(k)))`` that turns
  ``KV`` heads into ``KV·n`` (``n = H / KV`` query heads per KV head), up to the ``Reshape``
  that splits ``[…, heads·D]`` into ``[…, heads, D]``; then back through feature-preserving
  ``Reshape``s, per-feature bias ``Add``s and ``Split`` (GPT-2's fused ``c_attn``) to the
  projection, a ``MatMul``/``Gemm`` with a constant weight;
* forward from the attention output through ``Transpose`` and the ``Reshape`` that merges heads
  back into ``[…, H·D]``, to the output projection ``O``.

Every value on these paths must be read only inside the block, and every ``Reshape``/``Expand``
shape must be a constant with static shapes around it: a block is otherwise *skipped*, with the
reason recorded (never a guess). Fused attention ops (``Attention``, ``GroupQueryAttention``,
``MultiHeadAttention``: a ``num_heads`` attribute) are recorded as skipped too.

**Removing heads.** Query head ``h`` owns the projection columns ``h·D … h·D + D − 1`` of ``Q``
(weight and bias) and the same rows of ``O``; KV head ``g`` owns those columns of ``K`` and ``V``
and serves query heads ``g·n … g·n + n − 1``. ``unit=query`` (the default) removes the same number
of query heads inside every KV group (each KV head keeps ``c = round(n·(1 − ratio))`` of its ``n``
query heads, at least one): ``K``, ``V`` and the KV cache keep their shapes, so a prefill graph
and a KV-cache decode graph pruned alike stay compatible; and each group keeps its best heads
instead of losing or keeping all of them. ``unit=group`` removes whole KV groups (a KV head and
all its query heads; also ``K``/``V`` columns). Multi-head attention (``n = 1``) is the case where
both mean "remove whole heads". Every shape constant encoding a head count (``[1, S, 9, 64]``
reshapes, the repetition's ``Expand`` shape ``[1, 3, 3, S, 64]`` and its ``Reshape`` to
``[1, 9, S, 64]``, ``[S, 576]`` merges, ``Split`` sizes) is rewritten from the new static shapes
(``-1`` entries stay); shared constants are copied, never edited. The pruned model computes
exactly the unpruned one with the removed heads' ``O`` rows set to zero.

**Scores** per query head, larger is kept:

* ``magnitude``: ``‖O[rows of h]‖ · ‖V[columns of kv(h)]‖`` (the ``V`` factor is shared by a
  group, so within a group the ``O`` rows decide; left out when ``V`` is not traced);
* ``wanda``: ``Σ_d ‖O[h·D + d, :]‖ · mean |a_{h·D+d}|`` with ``a`` the attention output (``O``'s
  input) on the calibration data — what the head actually contributes.

``unit=group`` scores a group by the sum of its heads' scores.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir

from compiler.ir_utils import add_initializer
from passes.prune.common import Linear, const, linear, slice_constant

__all__ = ["AttentionBlock", "find_attention_blocks", "prune_block", "select_heads"]

_BINARY = {"Add", "Sub", "Mul", "Div"}
_UNARY = {"Neg", "Identity"}
FUSED_ATTENTION = {"Attention", "GroupQueryAttention", "MultiHeadAttention"}


class Refused(Exception):
    """A block the pass does not understand; the message is the recorded reason."""


@dataclasses.dataclass
class _Columns:
    """A constant (weight or bias) whose ``axis`` is indexed by projection output features,
    ``base`` being the feature this tensor's entry 0 stands for in its projection's output."""

    value: ir.Value
    axis: int
    base: int
    reader: ir.Node  # the node that reads it here (a shared tensor is copied for it alone)


@dataclasses.dataclass
class _Space:
    """One projection's feature axis (Q, K, V, fused QKV, or O's input), and the operands
    (role ``q`` or ``kv``, first feature) whose heads live in it."""

    projection: Linear
    width: int
    operands: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    tensors: list[_Columns] = dataclasses.field(default_factory=list)
    values: list[tuple[ir.Value, int, int]] = dataclasses.field(default_factory=list)
    splits: list[tuple[ir.Node, int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class AttentionBlock:
    """One attention core and everything that encodes its head count."""

    softmax: ir.Node
    heads: int
    kv_heads: int
    head_dim: int
    out: Linear  # O projection (feature axis: its input rows)
    spaces: list[_Space]
    # value, axis, role (``q``: query heads; ``kv``: KV heads; ``rep``: query heads per KV head)
    head_axes: list[tuple[ir.Value, int, str]]
    members: set[int]
    kv_traced: bool  # K and V traced to their projections (their heads can be removed)
    v_projection: _Space | None = None
    v_offset: int = 0  # V's first feature in its projection's output

    @property
    def group_size(self) -> int:
        return self.heads // self.kv_heads

    @property
    def out_input(self) -> ir.Value:
        return self.out.node.inputs[0]


class _Tracer:
    """Follows the head axis of one attention core (see the module docstring)."""

    def __init__(self, softmax: ir.Node, unit: str) -> None:
        self.softmax = softmax
        self.unit = unit
        self.head_axes: dict[int, tuple[ir.Value, int, str]] = {}
        self.extra: list[tuple[ir.Value, int, str]] = []  # second axes (the repetition's)
        self.nodes: dict[int, ir.Node] = {}
        self.spaces: dict[int, _Space] = {}
        self.head_dim: int | None = None
        self.heads: int | None = None
        self.kv_heads: int | None = None
        self.repeats: list[int] = []

    # -- helpers ---------------------------------------------------------------------------
    def _shape(self, value: ir.Value) -> list[int]:
        shape = value.shape
        if shape is None or not all(isinstance(d, int) for d in shape):
            raise Refused(f"value {value.name!r} has no static shape")
        return list(shape)

    def _mark(self, value: ir.Value, axis: int, role: str) -> bool:
        """Registers ``value``'s head axis; False when it was registered already."""
        expected = {"q": self.heads, "kv": self.kv_heads}.get(role)
        if expected is not None and self._shape(value)[axis] != expected:
            raise Refused(f"value {value.name!r} has {self._shape(value)[axis]} heads, "
                          f"not {expected}")  # fmt: skip
        seen = self.head_axes.get(id(value))
        if seen is not None:
            if seen[1:] != (axis, role):
                raise Refused(f"value {value.name!r} reached with two different head axes")
            return False
        self.head_axes[id(value)] = (value, axis, role)
        return True

    def _member(self, node: ir.Node) -> None:
        self.nodes[id(node)] = node

    @staticmethod
    def _perm(node: ir.Node, rank: int) -> list[int]:
        perm = node.attributes.get_ints("perm", None)
        return list(perm) if perm is not None else list(reversed(range(rank)))

    def _shape_input(self, node: ir.Node) -> np.ndarray:
        shape = const(node.inputs[1])
        if shape is None:
            raise Refused(f"{node.op_type} {node.name!r}: its shape is computed at run time")
        return shape

    # -- the core --------------------------------------------------------------------------
    def trace(self) -> AttentionBlock:
        softmax = self.softmax
        scores = softmax.outputs[0]
        shape = self._shape(scores)
        if len(shape) != 4:
            raise Refused(f"Softmax {softmax.name!r}: scores of rank {len(shape)}, not 4")
        axis = softmax.attributes.get_int("axis", -1) % 4
        if axis != 3:
            raise Refused(f"Softmax {softmax.name!r} over axis {axis}, not the keys")
        heads = self.heads = shape[1]
        uses = scores.uses()
        if len(uses) != 1 or scores.is_graph_output():
            raise Refused(f"Softmax {softmax.name!r}: probabilities read outside the block")
        pv, index = uses[0]
        if pv.op_type != "MatMul" or index != 0:
            raise Refused(f"Softmax {softmax.name!r} does not feed MatMul(probabilities, V)")
        self._member(softmax)
        self._member(pv)
        self._mark(scores, 1, "q")
        qk = self._scores_back(softmax.inputs[0], heads)
        self._member(qk)
        q_space, _ = self._back(qk.inputs[0], 1, "q", stop_at_repeat=False)
        k_space, _ = self._back(qk.inputs[1], 1, "q", stop_at_repeat=self.unit == "query")
        v_space, v_offset = self._back(pv.inputs[1], 1, "q", stop_at_repeat=self.unit == "query")
        if len(set(self.repeats)) > 1 or (self.repeats and len(self.repeats) != 2):
            raise Refused("K and V are repeated for grouped-query attention differently")
        kv_heads = self.kv_heads or heads
        if heads % kv_heads:
            raise Refused(f"{heads} query heads do not divide into {kv_heads} KV heads")
        out = self._forward(pv.outputs[0], 1, heads)
        assert self.head_dim is not None
        if q_space is None:
            raise Refused("Q does not come from a projection")
        kv_traced = k_space is not None and v_space is not None
        spaces = list({id(s): s for s in (q_space, k_space, v_space, out) if s}.values())
        for space in spaces:
            for value, _, _ in space.values:
                self._member_producer(value)
        block = AttentionBlock(
            softmax=softmax,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=self.head_dim,
            out=out.projection,
            spaces=spaces,
            head_axes=[*self.head_axes.values(), *self.extra],
            members=set(self.nodes),
            kv_traced=kv_traced,
        )
        if v_space is not None:
            block.v_projection, block.v_offset = v_space, v_offset
        self._check_closed(block)
        return block

    def _member_producer(self, value: ir.Value) -> None:
        producer = value.producer()
        if producer is not None:
            self._member(producer)

    def _scores_back(self, value: ir.Value, heads: int) -> ir.Node:
        """From the Softmax input back through scale/mask ops to ``MatMul(Q, Kᵀ)``."""
        while True:
            self._mark(value, 1, "q")
            node = value.producer()
            if node is None:
                raise Refused("scores do not come from MatMul(Q, Kᵀ)")
            if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
                return node
            if node.op_type not in _BINARY:
                raise Refused(f"{node.op_type} {node.name!r} between Q·Kᵀ and Softmax")
            self._member(node)
            chained = self._broadcast_split(node, 1, heads)
            if len(chained) != 1:
                raise Refused(f"{node.op_type} {node.name!r}: not one score chain")
            value = chained[0][0]

    def _broadcast_split(self, node: ir.Node, axis: int, count: int) -> list[tuple[ir.Value, int]]:
        """The inputs of elementwise ``node`` that carry the head axis (with their axis); the
        others must broadcast over it (size 1 or missing there)."""
        rank = len(self._shape(node.outputs[0]))
        chained = []
        for operand in node.inputs:
            if operand is None:
                continue
            shape = self._shape(operand)
            at = axis - (rank - len(shape))
            if at < 0 or shape[at] == 1:
                continue
            if shape[at] != count:
                raise Refused(f"{node.op_type} {node.name!r}: operand {operand.name!r} varies "
                              "over heads with another size")  # fmt: skip
            if const(operand) is not None:
                raise Refused(f"{node.op_type} {node.name!r}: a per-head constant")
            chained.append((operand, at))
        return chained

    def _back(self, value: ir.Value, axis: int, role: str, *, stop_at_repeat: bool):
        """Walks back from a head-axis value to its projection; returns its feature space and
        first feature there, or ``(None, 0)`` when the walk stopped at the GQA repetition
        (``stop_at_repeat``)."""
        stack = [(value, axis, role)]
        space: tuple[_Space, int] | None = None
        stopped = False
        while stack:
            value, axis, role = stack.pop()
            if not self._mark(value, axis, role):
                continue
            node = value.producer()
            if node is None:
                raise Refused(f"head path reaches the graph input {value.name!r}")
            self._member(node)
            out_shape = self._shape(value)
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            if op == "Transpose":
                perm = self._perm(node, len(out_shape))
                stack.append((node.inputs[0], perm[axis], role))
            elif op in _BINARY or op in _UNARY:
                for operand, at in self._broadcast_split(node, axis, out_shape[axis]):
                    stack.append((operand, at, role))
            elif op == "Slice":
                axes = const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
                if axes is None:
                    raise Refused(f"Slice {node.name!r} without constant axes on the head path")
                if axis in {int(a) % len(out_shape) for a in axes.ravel()}:
                    raise Refused(f"Slice {node.name!r} cuts the head axis")
                stack.append((node.inputs[0], axis, role))
            elif op == "Concat":
                if node.attributes.get_int("axis", 0) % len(out_shape) == axis:
                    raise Refused(f"Concat {node.name!r} along the head axis")
                stack.extend((operand, axis, role) for operand in node.inputs)
            elif op == "Reshape":
                in_shape = self._shape(node.inputs[0])
                self._shape_input(node)
                if len(in_shape) == len(out_shape) + 1:
                    stopped |= self._repeat(node, axis, stack, stop_at_repeat)
                elif len(in_shape) == len(out_shape) - 1 and axis == len(in_shape) - 1:
                    found = self._split_heads(node, axis, role)
                    if space is not None and (found[0] is not space[0] or found[1] != space[1]):
                        raise Refused("one operand from two projections")
                    space = found
                else:
                    raise Refused(f"Reshape {node.name!r} on the head path is not understood")
            else:
                raise Refused(f"{op} {node.name!r} on the head path")
        if space is None and not stopped:
            raise Refused("a head path without a projection")
        return (None, 0) if stopped or space is None else space

    def _repeat(self, reshape: ir.Node, axis: int, stack: list, stop: bool) -> bool:
        """``Reshape(Expand(Unsqueeze(x, axis + 1)))`` merging ``[KV, n]`` into ``KV·n``."""
        merged = self._shape(reshape.outputs[0])
        expanded = reshape.inputs[0]
        shape = self._shape(expanded)
        if shape[:axis] != merged[:axis] or shape[axis + 2 :] != merged[axis + 1 :]:
            raise Refused(f"Reshape {reshape.name!r} does not merge two axes into the heads")
        kv, n = shape[axis], shape[axis + 1]
        expand = expanded.producer()
        if expand is None or expand.op_type != "Expand":
            raise Refused(f"Reshape {reshape.name!r}: heads merged from something else than the "
                          "GQA repetition (Expand)")  # fmt: skip
        self._shape_input(expand)
        unsqueezed = expand.inputs[0]
        u = unsqueezed.producer()
        u_shape = self._shape(unsqueezed)
        if u is None or u.op_type != "Unsqueeze" or u_shape[axis + 1] != 1:
            raise Refused(f"Expand {expand.name!r}: not a repetition of an unsqueezed axis")
        u_axes = const(u.inputs[1]) if len(u.inputs) > 1 else None
        if u_axes is None or [int(a) % len(u_shape) for a in u_axes.ravel()] != [axis + 1]:
            raise Refused(f"Unsqueeze {u.name!r} is not the repetition's axis")
        if self.kv_heads not in (None, kv):
            raise Refused("K and V have different KV head counts")
        self.kv_heads = kv
        self.repeats.append(n)
        for node in (expand, u):
            self._member(node)
        for value in (expanded, unsqueezed):
            self._mark(value, axis, "kv")
        self.extra.append((expanded, axis + 1, "rep"))
        if stop:
            return True
        stack.append((u.inputs[0], axis, "kv"))
        return False

    def _split_heads(self, reshape: ir.Node, axis: int, role: str) -> tuple[_Space, int]:
        """``Reshape([…, heads·D] → […, heads, D])``: walks on to the projection."""
        features = reshape.inputs[0]
        in_shape, out_shape = self._shape(features), self._shape(reshape.outputs[0])
        heads, dim = out_shape[axis], out_shape[axis + 1]
        if in_shape[:axis] != out_shape[:axis] or in_shape[axis] != heads * dim:
            raise Refused(f"Reshape {reshape.name!r} does not split features into heads")
        if len(out_shape) != axis + 2:
            raise Refused(f"Reshape {reshape.name!r}: the head dimension is not the last axis")
        if self.head_dim not in (None, dim):
            raise Refused("Q, K and V have different head sizes")
        self.head_dim = dim
        return self._features_back(features, role)

    def _features_back(self, value: ir.Value, role: str) -> tuple[_Space, int]:
        """From ``[…, heads·D]`` back to the projection (last axis = features); returns its
        space and this operand's first feature there."""
        offset = 0  # first feature of this operand in the current value
        pending_values: list[list] = []  # [value, base, width]
        pending_tensors: list[_Columns] = []
        pending_splits: list[list] = []  # [node, base]
        while True:
            width = self._shape(value)[-1]
            pending_values.append([value, 0, width])
            node = value.producer()
            if node is None:
                raise Refused(f"projection input {value.name!r} is not computed by a MatMul/Gemm")
            self._member(node)
            proj = linear(node, as_input=False)
            if proj is not None and const(proj.weight).shape[proj.feature_axis] == width:
                key = id(proj.weight)
                space = self.spaces.get(key)
                if space is None:
                    space = self.spaces[key] = _Space(proj, width)
                    space.tensors.append(_Columns(proj.weight, proj.feature_axis, 0, node))
                    bias = const(proj.bias)
                    if bias is not None:
                        if bias.ndim != 1 or bias.shape[0] != width:
                            raise Refused(f"{node.op_type} {node.name!r}: bias is not per feature")
                        space.tensors.append(_Columns(proj.bias, 0, 0, node))
                space.operands.append((role, offset))
                # Q, K and V of a fused projection meet here: each tensor, value and Split once.
                known = {(id(t.value), id(t.reader)) for t in space.tensors}
                for tensor in pending_tensors:
                    if (id(tensor.value), id(tensor.reader)) not in known:
                        known.add((id(tensor.value), id(tensor.reader)))
                        space.tensors.append(tensor)
                space.values.extend((v, b, w) for v, b, w in pending_values)
                known_splits = {id(n) for n, _ in space.splits}
                space.splits.extend((n, b) for n, b in pending_splits if id(n) not in known_splits)
                return space, offset
            if node.op_type == "Add" and node.domain in ("", "ai.onnx"):
                arrays = [const(x) for x in node.inputs]
                k = [i for i, a in enumerate(arrays) if a is not None]
                if len(k) != 1 or arrays[k[0]].size != width or arrays[k[0]].shape[-1] != width:
                    raise Refused(f"Add {node.name!r} before the head split is not a bias add")
                bias = node.inputs[k[0]]
                if not bias.is_initializer():
                    raise Refused(f"Add {node.name!r}: bias is not an initializer")
                pending_tensors.append(_Columns(bias, arrays[k[0]].ndim - 1, 0, node))
                value = node.inputs[1 - k[0]]
            elif node.op_type == "Reshape" and node.domain in ("", "ai.onnx"):
                self._shape_input(node)
                if self._shape(node.inputs[0])[-1] != width:
                    raise Refused(f"Reshape {node.name!r} before the head split moves features")
                value = node.inputs[0]
            elif node.op_type == "Split" and node.domain in ("", "ai.onnx"):
                source = node.inputs[0]
                rank = len(self._shape(source))
                if node.attributes.get_int("axis", 0) % rank != rank - 1:
                    raise Refused(f"Split {node.name!r} not along the features")
                total = self._shape(source)[-1]
                sizes = [self._shape(o)[-1] for o in node.outputs]
                if sum(sizes) != total:
                    raise Refused(f"Split {node.name!r}: sizes do not add up")
                start = sum(sizes[: list(node.outputs).index(value)])
                offset += start
                for entry in pending_values:
                    entry[1] += start
                for tensor in pending_tensors:
                    tensor.base += start
                for entry in pending_splits:
                    entry[1] += start
                pending_splits.append([node, 0])
                value = source
            else:
                raise Refused(f"{node.op_type} {node.name!r} between a projection and its heads")

    def _forward(self, value: ir.Value, axis: int, heads: int) -> _Space:
        """From the attention output ``[…, H, S, D]`` to the O projection."""
        while True:
            self._mark(value, axis, "q")
            uses = value.uses()
            if len(uses) != 1 or value.is_graph_output():
                raise Refused(f"attention output {value.name!r} is read more than once")
            node, index = uses[0]
            self._member(node)
            shape = self._shape(value)
            if node.op_type == "Transpose":
                axis = self._perm(node, len(shape)).index(axis)
                value = node.outputs[0]
                continue
            if node.op_type != "Reshape" or index != 0:
                raise Refused(f"{node.op_type} {node.name!r} after the attention output")
            self._shape_input(node)
            merged = self._shape(node.outputs[0])
            dim = shape[-1]
            if axis != len(shape) - 2 or merged[-1] != heads * dim:
                raise Refused(f"Reshape {node.name!r} does not merge the heads")
            if self.head_dim not in (None, dim):
                raise Refused("the attention output has another head size")
            self.head_dim = dim
            break
        value = node.outputs[0]
        width = heads * dim
        values = []
        while True:
            values.append((value, 0, width))
            uses = value.uses()
            if len(uses) != 1 or value.is_graph_output():
                raise Refused(f"merged heads {value.name!r} are read more than once")
            node, index = uses[0]
            self._member(node)
            out = linear(node, as_input=True)
            if out is not None and index == 0:
                if const(out.weight).shape[out.feature_axis] != width:
                    raise Refused(f"{node.op_type} {node.name!r}: weight rows are not H·D")
                columns = _Columns(out.weight, out.feature_axis, 0, node)
                space = _Space(out, width, [("q", 0)], [columns])
                space.values = values
                return space
            if node.op_type != "Reshape" or self._shape(node.outputs[0])[-1] != width:
                raise Refused(f"{node.op_type} {node.name!r} between the heads and O")
            self._shape_input(node)
            value = node.outputs[0]

    def _check_closed(self, block: AttentionBlock) -> None:
        values = [v for v, _, _ in block.head_axes]
        values += [v for s in block.spaces for v, _, _ in s.values]
        for value in values:
            producer = value.producer()
            if producer is None or id(producer) not in block.members:
                continue
            if value.is_graph_output():
                raise Refused(f"{value.name!r} inside the block is a graph output")
            for user, _ in value.uses():
                if id(user) not in block.members:
                    raise Refused(f"{value.name!r} inside the block is read by {user.name!r}")


def find_attention_blocks(
    graph: ir.Graph, unit: Literal["query", "group"] = "query"
) -> tuple[list[AttentionBlock], list[dict]]:
    """The attention blocks of ``graph``, and a record for each one skipped (with its reason)."""
    blocks, skipped = [], []
    for node in graph:
        if node.op_type in FUSED_ATTENTION:
            skipped.append(
                {
                    "node": node.name,
                    "mode": "heads",
                    "skipped": f"fused {node.op_type} op (num_heads attribute) is not rewritten",
                }
            )
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        try:
            blocks.append(_Tracer(node, unit).trace())
        except Refused as e:
            skipped.append({"node": node.name, "mode": "heads", "skipped": str(e)})
    return blocks, skipped


def head_scores(block: AttentionBlock, activity: np.ndarray | None) -> np.ndarray:
    """A score per query head (see the module docstring)."""
    d = block.head_dim
    o = const(block.out.weight)
    rows = np.linalg.norm(np.moveaxis(o, block.out.feature_axis, 0), axis=1)  # [H·D]
    if activity is not None:
        return (rows * activity).reshape(block.heads, d).sum(axis=1)
    scores = np.sqrt((rows.reshape(block.heads, d) ** 2).sum(axis=1))
    if block.v_projection is not None:
        space = block.v_projection
        v = np.moveaxis(const(space.projection.weight), space.projection.feature_axis, 0)
        count = block.kv_heads if block.group_size > 1 else block.heads
        cols = v[block.v_offset : block.v_offset + count * d]
        v_norm = np.sqrt((cols.reshape(count, -1) ** 2).sum(axis=1))
        scores = scores * np.repeat(v_norm, block.heads // count)
    return scores


def select_heads(
    block: AttentionBlock, scores: np.ndarray, ratio: float, unit: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(kept query heads, kept KV heads)``, sorted."""
    n, kv = block.group_size, block.kv_heads
    by_group = scores.reshape(kv, n)
    if unit == "query" and n > 1:
        count = min(n, max(1, round(n * (1.0 - ratio))))
        order = np.argsort(-by_group, axis=1, kind="stable")[:, :count]
        kept = np.sort((np.arange(kv)[:, None] * n + order).ravel())
        return kept, np.arange(kv)
    count = min(kv, max(1, round(kv * (1.0 - ratio))))
    groups = np.sort(np.argsort(-by_group.sum(axis=1), kind="stable")[:count])
    kept = (groups[:, None] * n + np.arange(n)).ravel()
    return kept, groups


def prune_block(
    graph: ir.Graph, block: AttentionBlock, kept_q: np.ndarray, kept_kv: np.ndarray
) -> None:
    """Removes every head not in ``kept_q`` / KV head not in ``kept_kv`` from ``block``."""
    d = block.head_dim
    kept_set = {"q": set(kept_q.tolist()), "kv": set(kept_kv.tolist())}
    total = {"q": block.heads, "kv": block.kv_heads}
    counts = {"q": len(kept_q), "kv": len(kept_kv), "rep": len(kept_q) // len(kept_kv)}
    if block.group_size == 1:
        total["kv"], counts["rep"] = block.heads, 1
    if len(kept_kv) < block.kv_heads and block.group_size > 1 and not block.kv_traced:
        raise AssertionError("KV heads removed from a block whose K/V were not traced")
    # 1. Features (columns) to remove in every projection space.
    new_width: dict[int, tuple[np.ndarray, int]] = {}
    for space in block.spaces:
        removed = np.zeros(space.width, bool)
        for role, offset in space.operands:
            for h in range(total[role]):
                if h not in kept_set[role]:
                    removed[offset + h * d : offset + (h + 1) * d] = True
        new_width[id(space)] = (removed, space.width)
    # 2. Shapes of the values first: shape constants are rewritten from them.
    old_shapes = {}
    for space in block.spaces:
        removed, _ = new_width[id(space)]
        for value, base, width in space.values:
            dims = list(value.shape)
            old_shapes.setdefault(id(value), (value, list(dims)))
            dims[-1] = width - int(removed[base : base + width].sum())
            value.shape = ir.Shape(dims)
    for value, axis, role in block.head_axes:
        dims = list(value.shape)
        old_shapes.setdefault(id(value), (value, list(dims)))
        dims[axis] = counts[role]
        value.shape = ir.Shape(dims)
    for value, old in old_shapes.values():
        node = value.producer()
        if node is not None and node.op_type in ("Reshape", "Expand") and id(node) in block.members:
            _rewrite_shape(graph, node, old)
    # 3. Weights, biases and Split sizes.
    for space in block.spaces:
        removed, _ = new_width[id(space)]
        for tensor in space.tensors:
            length = const(tensor.value).shape[tensor.axis]
            keep = np.flatnonzero(~removed[tensor.base : tensor.base + length])
            if len(keep) < length:
                slice_constant(graph, tensor.value, keep, tensor.axis, {id(tensor.reader)})
        for node, _ in space.splits:
            sizes = [o.shape[-1] for o in node.outputs]  # (already the new shapes)
            split = add_initializer(graph, f"{node.name}_sizes", np.array(sizes, np.int64))
            inputs = list(node.inputs)
            if len(inputs) > 1 and inputs[1] is not None:
                node.replace_input_with(1, split)
            else:
                node.resize_inputs(2)
                node.replace_input_with(1, split)
            node.attributes.pop("num_outputs", None)


def _rewrite_shape(graph: ir.Graph, node: ir.Node, old_out: list[int]) -> None:
    """Points ``node``'s shape input at a new constant giving its (already updated) output
    shape; ``-1`` (Reshape) and ``1`` (Expand broadcast) entries stay."""
    shape = const(node.inputs[1])
    new_out = list(node.outputs[0].shape)
    if node.op_type == "Reshape":
        allowzero = node.attributes.get_int("allowzero", 0)
        new_in = list(node.inputs[0].shape)
        entries = []
        for i, entry in enumerate(shape.tolist()):
            if entry == -1 or (entry == 0 and not allowzero and new_in[i] == new_out[i]):
                entries.append(entry)
            elif entry == 0 and not allowzero:
                raise AssertionError(f"Reshape {node.name!r}: a copied dimension changed")
            else:
                entries.append(new_out[i])
    else:  # Expand: right-aligned broadcast
        offset = len(new_out) - len(shape)
        entries = [e if e == 1 else new_out[offset + i] for i, e in enumerate(shape.tolist())]
    if entries == shape.tolist():
        return
    value = add_initializer(graph, f"{node.name}_shape", np.array(entries, np.int64))
    node.replace_input_with(1, value)
