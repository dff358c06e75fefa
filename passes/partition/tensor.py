"""``partition(mode=tensor)``: Megatron-style tensor parallelism — every MatMul/Gemm with a
constant 2-D weight is split across ``K`` shards, and the graph between a column-sharded and a
row-sharded matmul runs sharded too, so that a whole MLP or attention block needs one exchange.

**The math.** For ``y = x · W`` with ``W`` of shape ``[K_in, N]`` and a partition of the
columns into index sets ``I_0 … I_{K-1}`` (each of ``N / K`` columns):

* *column-sharded*: shard ``k`` computes ``y_k = x · W[:, I_k]`` — the columns ``I_k`` of ``y``,
  exactly (each output element is the same dot product as before). ``y`` is their all-gather:
  ``Concat(y_0 … y_{K-1}, axis=-1)``, followed by a ``Gather`` that restores the column order
  when the ``I_k`` are not consecutive blocks.
* *row-sharded*: when shard ``k`` holds the columns ``I_k`` of the activation ``h``,
  ``h · V = Σ_k h[…, I_k] · V[I_k, :]``: each shard multiplies its slice by the matching rows of
  ``V`` and the partial products are all-reduced (``Sum``). A Gemm's bias is added once, after
  the ``Sum``. Only the summation order changes (float rounding: ~1e-6 relative on a 12-layer
  GPT-2 in fp32).

**Pairing.** Between a column-sharded matmul and a row-sharded one, any op that treats the
sharded axis element by element can run on the slices (Megatron's MLP: ``up → GELU → down``;
attention: ``QKV → split heads → softmax(QKᵀ) V → merge heads → O``). The pass propagates a
*layout* — the axis a value is split along, and which positions of it each shard holds — from
each column-sharded matmul forward through such ops (elementwise with broadcasting, Transpose,
Reshape that splits or merges the sharded axis along whole blocks, Split, Softmax and
normalizations over other axes, MatMul batched over the sharded axis, Slice/Concat/Reduce over
other axes). A matmul whose activation is split along its inner dimension ends the block
(row-sharded, all-reduce); a value used by anything else is all-gathered. Constants and
replicated values broadcast over the sharded axis are used whole; those that span it are sliced.
A node joins a block only when its replicated inputs do not depend on the block (that would be
a cycle through the exchange), and branches that end in an all-gather rather than a
row-sharded matmul (a residual add) are left whole when gathering where they branch off is
cheaper.

*Why layouts are index sets.* GPT-2 computes Q, K and V with one ``[H, 3H]`` matmul and then
splits its output in three: contiguous column blocks would give shard 0 all of Q and half of K.
For each column-sharded matmul the pass tries the contiguous blocks and, for every ``Split``
that follows, the blocks taken part by part (shard ``k`` gets heads ``k·h/K …`` of Q, K and V
alike), propagates each, and keeps the layout that exchanges the fewest bytes (all-gathered
values plus all-reduced outputs). Matmuls that read the same activation (Llama's separate
``q/k/v`` and ``gate/up`` projections) are sharded together, so their slices meet. When no
block pairs, the fallback is plain column sharding with a gather right after the matmul.

*Why not more.* Sharding the sequence or batch axis would need the whole weight on every shard;
vocabulary-parallel embeddings would need a masked lookup. A matmul whose ``N`` is not a
multiple of ``K`` and that ends no block stays whole (the plan lists it with the reason), as do
quantized matmuls. A model with no weight to split, or partitioned already, is refused.

**Steps.** The rewritten graph is a chain of *segments*: segment ``j`` holds the replicated
nodes that can run once groups ``0 … j-1`` have exchanged (each as early as possible) and
group ``j``'s shard nodes; the last segment holds what follows the last group. Each shard
compiles its own module per segment (the replicated nodes are duplicated in every shard's
module: they are cheap — layer norms, residual adds — and it saves a round trip). After segment
``j`` the shards exchange group ``j``'s slices or partial sums; the ``Concat``/``Sum`` that
combines them is an ordinary node of segment ``j + 1``, identical on every shard, so every shard
holds the same replicated values.

**Precondition.** Static shapes on the values of the sharded blocks (a block stops where they
are unknown). Run ``partition`` last: the model is annotated for the build
(``compiler.partition.segment``/``shard``/``group`` node metadata, and the plan under
``compiler.partition``); a later pass that adds nodes makes the split refuse the model. The
rewritten model itself is an ordinary ONNX model, equal to the input model up to summation order.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable

import networkx as nx
import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common

from compiler.errors import InputError
from compiler.model_info import node_flops

__all__ = [
    "COMBINE_KEY",
    "GROUP_KEY",
    "SEGMENT_KEY",
    "SHARD_KEY",
    "Layout",
    "shard_model",
]

SHARD_KEY = "compiler.partition.shard"
GROUP_KEY = "compiler.partition.group"
SEGMENT_KEY = "compiler.partition.segment"
COMBINE_KEY = "compiler.partition.combine"
SUFFIX = "__tp"
MAX_LAYOUT_CHOICES = 16  # layout combinations tried for matmuls sharded together

_DOMAINS = ("", "ai.onnx")
# fmt: off
_UNARY = frozenset({
    "Abs", "Acos", "Asin", "Atan", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Cos", "Cosh",
    "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity",
    "IsInf", "IsNaN", "LeakyRelu", "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round",
    "Selu", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh",
    "ThresholdedRelu",
})
_BROADCASTING = frozenset({
    "Add", "And", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "PRelu",
    "Pow", "Sub", "Sum", "Where", "Xor",
})
_REDUCE = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
})
# fmt: on
_ELEMENTWISE = _UNARY | _BROADCASTING


# ------------------------------------------------------------------------------- analysis
@dataclasses.dataclass(eq=False)
class Layout:
    """A value split along ``axis`` (of ``rank``): shard ``k`` holds the positions
    ``index[k]`` of the full value, in that order (``index``: ``[K, size / K]``)."""

    axis: int
    rank: int
    index: np.ndarray

    @property
    def size(self) -> int:
        return int(self.index.size)

    @property
    def shard_size(self) -> int:
        return int(self.index.shape[1])

    def same_positions(self, other: Layout) -> bool:
        return self.index.shape == other.index.shape and np.array_equal(self.index, other.index)

    def moved(self, axis: int, rank: int | None = None, index: np.ndarray | None = None):
        return Layout(
            axis, self.rank if rank is None else rank, self.index if index is None else index
        )


@dataclasses.dataclass(eq=False)
class _MatMul:
    """A MatMul/Gemm with a constant 2-D weight: ``y = alpha · x · weight (+ beta · C)``."""

    node: ir.Node
    weight: np.ndarray  # [K_in, N], oriented as applied (a Gemm's transB folded in)
    gemm: bool
    trans_b: bool

    @property
    def activation(self) -> ir.Value:
        return self.node.inputs[0]

    @property
    def k(self) -> int:
        return int(self.weight.shape[0])

    @property
    def n(self) -> int:
        return int(self.weight.shape[1])

    def sliced(self, index: np.ndarray, rows: bool) -> np.ndarray:
        """The weight's rows (row sharding) or columns (column sharding) ``index``, stored in
        the orientation the node reads (a Gemm with ``transB`` reads the transpose)."""
        part = self.weight[index, :] if rows else self.weight[:, index]
        return np.ascontiguousarray(part.T if self.trans_b else part)


@dataclasses.dataclass
class _Replace:
    """A per-shard replacement for one input: new constants, or a slice of a replicated value
    (``Gather`` along ``axis`` with each shard's positions)."""

    arrays: Callable[[], list[np.ndarray]] | None = None
    gather: tuple[int, np.ndarray] | None = None


@dataclasses.dataclass(eq=False)
class _Member:
    """A node of a sharded block: how each shard's copy differs from it."""

    node: ir.Node
    outputs: list[Layout | None]
    role: str = "sharded"  # "column" | "row" | "sharded"
    inputs: dict[int, _Replace] = dataclasses.field(default_factory=dict)
    attributes: dict[str, ir.Attr | None] = dataclasses.field(default_factory=dict)
    drop_inputs_from: int | None = None  # a row-sharded Gemm drops its bias (added after Sum)


@dataclasses.dataclass(eq=False)
class _Region:
    """One group: the matmuls sharded together and the nodes that run sharded after them."""

    seeds: list[_MatMul]
    members: list[_Member]  # in graph order
    layouts: dict[ir.Value, Layout]
    rows: dict[ir.Node, _MatMul]
    gathers: list[ir.Value]
    cost: int  # bytes exchanged: all-gathered values + all-reduced outputs


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _dims(value: ir.Value | None) -> list[int] | None:
    """The static shape of ``value``, or None when its rank or any dim is unknown."""
    if value is None or value.shape is None:
        return None
    dims = list(value.shape)
    return dims if all(isinstance(d, int) for d in dims) else None


def _rank(value: ir.Value) -> int | None:
    return None if value.shape is None else len(value.shape)


def _weight_array(value: ir.Value | None) -> np.ndarray | None:
    """A constant float matrix: an initializer or constant, or ``Transpose`` of one (a tied
    embedding used as the LM head)."""
    array = _constant(value)
    if array is None and value is not None:
        producer = value.producer()
        if (
            producer is not None
            and producer.op_type == "Transpose"
            and producer.domain in _DOMAINS
            and tuple(producer.attributes.get_ints("perm", (1, 0))) == (1, 0)
        ):
            inner = _constant(producer.inputs[0])
            array = inner.T if inner is not None and inner.ndim == 2 else None
    if array is None or array.ndim != 2 or array.dtype.kind != "f":
        return None
    return array


def _matmul(node: ir.Node) -> _MatMul | None:
    """The node as a matmul with a constant 2-D weight, or None."""
    if node.domain not in _DOMAINS or node.op_type not in ("MatMul", "Gemm"):
        return None
    if len(node.inputs) < 2 or node.inputs[0] is None or _constant(node.inputs[0]) is not None:
        return None
    if node.inputs[0].shape is None or len(node.inputs[0].shape) < 1:
        return None
    weight = _weight_array(node.inputs[1])
    if weight is None:
        return None
    if node.op_type == "MatMul":
        return _MatMul(node, weight, gemm=False, trans_b=False)
    if node.attributes.get_int("transA", 0):
        return None
    trans_b = bool(node.attributes.get_int("transB", 0))
    return _MatMul(node, weight.T if trans_b else weight, gemm=True, trans_b=trans_b)


# ----------------------------------------------------------------------- layout propagation
class _Propagation:
    """Rules that give a node's output layouts from its sharded inputs' (None: cannot shard)."""

    def __init__(self, shards: int, opset: int) -> None:
        self.shards = shards
        self.opset = opset
        self.rules = {
            "Concat": self._concat,
            "Expand": self._expand,
            "Hardmax": self._softmax,
            "LayerNormalization": self._layer_normalization,
            "LogSoftmax": self._softmax,
            "MatMul": self._matmul,
            "Reshape": self._reshape,
            "Slice": self._slice,
            "Softmax": self._softmax,
            "Split": self._split,
            "Squeeze": self._squeeze,
            "Transpose": self._transpose,
            "Unsqueeze": self._unsqueeze,
            **{op: self._reduce for op in _REDUCE},
        }

    def __call__(
        self, node: ir.Node, layouts: dict[ir.Value, Layout], clean: Callable[[ir.Value], bool]
    ) -> _Member | None:
        if node.domain not in _DOMAINS or not node.outputs:
            return None
        if any(o.shape is None for o in node.outputs):
            return None
        self.layouts, self.clean = layouts, clean
        op = node.op_type
        if op in _ELEMENTWISE:
            slots = [0] if op == "CastLike" else list(range(len(node.inputs)))
            member = self._aligned(node, slots)
        elif op in self.rules:
            member = self.rules[op](node)
        else:
            return None
        if member is None:
            return None
        for value, layout in zip(node.outputs, member.outputs, strict=True):
            dims = value.shape
            if layout is not None and (
                len(dims) != layout.rank or dims[layout.axis] != layout.size
            ):
                return None  # a shape the rule did not foresee: leave the node whole
        return member

    # -- helpers
    def _sharded(self, node: ir.Node, slot: int) -> Layout | None:
        value = node.inputs[slot] if slot < len(node.inputs) else None
        return self.layouts.get(value) if value is not None else None

    def _only(self, node: ir.Node, slot: int = 0) -> Layout | None:
        """The layout of input ``slot`` when it is the only sharded input."""
        sharded = [i for i, v in enumerate(node.inputs) if v is not None and v in self.layouts]
        return self._sharded(node, slot) if sharded == [slot] else None

    def _slice_replicated(
        self, value: ir.Value, axis: int, size: int, layout: Layout
    ) -> _Replace | bool | None:
        """How a replicated operand meets the sharded axis at its own ``axis``: True when it
        broadcasts over it (absent or size 1), a per-shard slice when it spans it, else None."""
        if not self.clean(value):
            return None
        if axis < 0:
            return True
        dims = value.shape
        if dims is None or not isinstance(dims[axis], int):
            return None
        if dims[axis] == 1:
            return True
        if dims[axis] != size:
            return None
        array = _constant(value)
        if array is not None:
            return _Replace(
                arrays=lambda: [
                    np.take(array, layout.index[k], axis=axis) for k in range(self.shards)
                ]
            )
        return _Replace(gather=(axis, layout.index))

    def _aligned(self, node: ir.Node, slots: list[int], rank: int | None = None) -> _Member | None:
        """Elementwise with numpy broadcasting over ``slots``: sharded inputs must agree on the
        (right-aligned) axis and positions; replicated ones broadcast over it or are sliced."""
        rank = _rank(node.outputs[0]) if rank is None else rank
        ref: tuple[int, Layout] | None = None
        for slot in slots:
            layout = self._sharded(node, slot)
            if layout is None:
                continue
            axis = layout.axis + rank - layout.rank
            if ref is None:
                ref = (axis, layout)
            elif axis != ref[0] or not layout.same_positions(ref[1]):
                return None
        if ref is None:
            return None
        axis, layout = ref
        replace = {}
        for slot in slots:
            value = node.inputs[slot] if slot < len(node.inputs) else None
            if value is None or value in self.layouts:
                continue
            if value.shape is None:
                return None
            how = self._slice_replicated(
                value, axis - (rank - len(value.shape)), layout.size, layout
            )
            if how is None:
                return None
            if isinstance(how, _Replace):
                replace[slot] = how
        out = layout.moved(axis, rank)
        return _Member(node, [out] * len(node.outputs), inputs=replace)

    def _axis_attr(self, node: ir.Node, default: int, rank: int) -> int:
        axis = node.attributes.get_int("axis", default)
        return axis + rank if axis < 0 else axis

    # -- rules
    def _transpose(self, node):
        layout = self._only(node)
        if layout is None:
            return None
        perm = list(node.attributes.get_ints("perm", list(range(layout.rank))[::-1]))
        return _Member(node, [layout.moved(perm.index(layout.axis))])

    def _softmax(self, node):
        layout = self._only(node)
        if layout is None or ("axis" not in node.attributes and self.opset < 13):
            return None
        if self._axis_attr(node, -1, layout.rank) == layout.axis:
            return None
        return _Member(node, [layout])

    def _layer_normalization(self, node):
        layout = self._only(node)
        if layout is None or self._axis_attr(node, -1, layout.rank) <= layout.axis:
            return None  # the statistics would span the sharded axis
        return _Member(node, [layout] * len(node.outputs))

    def _concat(self, node):
        rank = _rank(node.outputs[0])
        member = self._aligned(node, list(range(len(node.inputs))), rank)
        if member is None or self._axis_attr(node, 0, rank) == member.outputs[0].axis:
            return None
        return member

    def _slice(self, node):
        layout = self._only(node)
        if layout is None:
            return None
        starts = _constant(node.inputs[1])
        axes = _constant(node.inputs[3]) if len(node.inputs) > 3 else None
        if starts is None or (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None):
            return None
        axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
        if layout.axis in [a + layout.rank if a < 0 else a for a in axes]:
            return None
        return _Member(node, [layout])

    def _reduce(self, node):
        layout = self._only(node)
        if layout is None:
            return None
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            axes = _constant(node.inputs[1])
            if axes is None:
                return None
            axes = [int(a) for a in axes]
        else:
            axes = list(node.attributes.get_ints("axes", []))
        if not axes:
            return None  # all axes (or none, with noop_with_empty_axes): not worth the case
        axes = [a + layout.rank if a < 0 else a for a in axes]
        if layout.axis in axes:
            return None
        if node.attributes.get_int("keepdims", 1):
            return _Member(node, [layout])
        axis = layout.axis - sum(a < layout.axis for a in axes)
        return _Member(node, [layout.moved(axis, layout.rank - len(axes))])

    def _unsqueeze(self, node):
        layout = self._only(node)
        if layout is None:
            return None
        axes = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
        axes = list(node.attributes.get_ints("axes", [])) if axes is None else list(axes)
        rank = layout.rank + len(axes)
        axes = [int(a) + rank if a < 0 else int(a) for a in axes]
        kept = [i for i in range(rank) if i not in axes]
        return _Member(node, [layout.moved(kept[layout.axis], rank)])

    def _squeeze(self, node):
        layout = self._only(node)
        if layout is None:
            return None
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            axes = _constant(node.inputs[1])
            if axes is None:
                return None
            axes = [int(a) for a in axes]
        elif "axes" in node.attributes:
            axes = list(node.attributes.get_ints("axes"))
        else:
            dims = _dims(node.inputs[0])
            if dims is None:
                return None
            axes = [i for i, d in enumerate(dims) if d == 1]
        axes = [a + layout.rank if a < 0 else a for a in axes]
        if layout.axis in axes:
            return None
        axis = layout.axis - sum(a < layout.axis for a in axes)
        return _Member(node, [layout.moved(axis, layout.rank - len(axes))])

    def _expand(self, node):
        layout = self._only(node)
        shape = _constant(node.inputs[1]) if layout is not None else None
        if shape is None:
            return None
        rank = max(layout.rank, len(shape))
        axis = layout.axis + rank - layout.rank
        entry = axis - (rank - len(shape))
        member = _Member(node, [layout.moved(axis, rank)])
        if entry >= 0 and shape[entry] != 1:
            if shape[entry] != layout.size:
                return None
            new = shape.copy()
            new[entry] = layout.shard_size
            member.inputs[1] = _Replace(arrays=lambda: [new] * self.shards)
        return member

    def _reshape(self, node):
        layout = self._only(node)
        target = _constant(node.inputs[1]) if layout is not None else None
        src, dst = _dims(node.inputs[0]), _dims(node.outputs[0])
        if target is None or src is None or dst is None or 0 in target.tolist():
            return None
        a, size, shards = layout.axis, layout.size, self.shards
        outer = math.prod(src[:a])
        b = next((i for i in range(len(dst)) if math.prod(dst[:i]) == outer and dst[i] > 1), None)
        if b is None:
            return None
        if dst[b] == size:  # the sharded axis survives whole
            index = layout.index
        elif dst[b] % size == 0:  # merged with the axes after it: each position becomes a block
            block = dst[b] // size
            if block not in itertools.accumulate(src[a + 1 :], lambda x, y: x * y):
                return None
            index = (layout.index[:, :, None] * block + np.arange(block)).reshape(shards, -1)
        elif size % dst[b] == 0:  # split: each shard must hold whole blocks
            block = size // dst[b]
            if block not in itertools.accumulate(dst[b + 1 :], lambda x, y: x * y):
                return None
            if layout.shard_size % block:
                return None
            blocks = layout.index.reshape(shards, -1, block)
            index = blocks[:, :, 0] // block
            if not np.array_equal(blocks, index[:, :, None] * block + np.arange(block)):
                return None
        else:
            return None
        new = target.copy()
        if new[b] != -1:
            if new[b] != dst[b]:
                return None
            new[b] = index.shape[1]
        member = _Member(node, [Layout(b, len(dst), index)])
        member.inputs[1] = _Replace(arrays=lambda: [new] * shards)
        return member

    def _split(self, node):
        layout = self._only(node)
        if layout is None:
            return None
        axis = self._axis_attr(node, 0, layout.rank)
        if axis != layout.axis:
            return _Member(node, [layout] * len(node.outputs))
        size, count = layout.size, len(node.outputs)
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            sizes = _constant(node.inputs[1])
            if sizes is None:
                return None
            sizes = [int(s) for s in sizes]
        else:
            count = node.attributes.get_int("num_outputs", count)
            chunk = -(-size // count)
            sizes = [chunk] * (count - 1) + [size - chunk * (count - 1)]
        ends = np.cumsum(sizes)
        starts = ends - np.asarray(sizes)
        parts = np.searchsorted(ends, layout.index, side="right")  # [K, S/K]: part of each
        if np.any(np.diff(parts, axis=1) < 0):
            return None  # a shard's positions must come part by part to split its slice
        counts = np.stack([np.bincount(p, minlength=len(sizes)) for p in parts])
        if np.any(counts != counts[0]) or np.any(counts[0] * self.shards != np.asarray(sizes)):
            return None  # every shard must hold an equal, non-empty share of every part
        if np.any(counts[0] == 0):
            return None
        outputs = []
        for j in range(len(sizes)):
            index = np.stack(
                [row[p == j] - starts[j] for row, p in zip(layout.index, parts, strict=True)]
            )
            outputs.append(layout.moved(axis, index=index))
        member = _Member(node, outputs, attributes={"num_outputs": None})
        split = counts[0].astype(np.int64)
        member.inputs[1] = _Replace(arrays=lambda: [split] * self.shards)
        return member

    def _matmul(self, node):
        """A batched matmul of activations: split over a batch axis (both operands alike, or
        one broadcast over it), over A's rows, or over B's columns. Never over the inner dim:
        its partial sums would need an all-reduce in the middle of a block."""
        a_value, b_value = node.inputs[0], node.inputs[1]
        la, lb = self.layouts.get(a_value), self.layouts.get(b_value)
        ra, rb = _rank(a_value), _rank(b_value)
        rank = _rank(node.outputs[0])
        if ra is None or rb is None or ra < 2 or rb < 2:
            return None
        if (la is not None and la.axis == ra - 1) or (lb is not None and lb.axis == rb - 2):
            return None  # the inner dimension
        if lb is not None and lb.axis == rb - 1:  # B's columns
            if la is not None or self._slice_replicated(a_value, -1, 0, lb) is not True:
                return None
            return _Member(node, [lb.moved(rank - 1, rank)])
        if la is not None and la.axis == ra - 2:  # A's rows
            if lb is not None or self._slice_replicated(b_value, -1, 0, la) is not True:
                return None
            return _Member(node, [la.moved(rank - 2, rank)])
        return self._aligned_batch(node, rank)

    def _aligned_batch(self, node, rank):
        """Batch axes broadcast like elementwise operands (the last two dims excluded)."""
        member = self._aligned(node, [0, 1], rank)
        if member is None or member.outputs[0].axis >= rank - 2:
            return None
        return member


# ---------------------------------------------------------------------------------- regions
def _layout_choices(seed: _MatMul, shards: int) -> list[np.ndarray]:
    """Column index sets to try: contiguous blocks, then part-by-part blocks for each ``Split``
    of the output along its last axis found a few nodes downstream (fused QKV)."""
    n = seed.n
    choices = [np.arange(n).reshape(shards, n // shards)]
    seen, frontier = set(), [seed.node.outputs[0]]
    for _ in range(4):
        nxt = []
        for value in frontier:
            for user, _slot in value.uses():
                if id(user) in seen:
                    continue
                seen.add(id(user))
                dims = _dims(user.inputs[0]) if user.inputs else None
                if user.op_type == "Split" and dims and dims[-1] == n:
                    axis = user.attributes.get_int("axis", 0)
                    if axis in (-1, len(dims) - 1):
                        sizes = _constant(user.inputs[1]) if len(user.inputs) > 1 else None
                        if sizes is None:
                            count = user.attributes.get_int("num_outputs", len(user.outputs))
                            sizes = [n // count] * count if n % count == 0 else None
                        if sizes is not None and all(int(s) % shards == 0 for s in sizes):
                            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
                            index = np.concatenate(
                                [
                                    o + np.arange(int(s)).reshape(shards, -1)
                                    for o, s in zip(offsets, sizes, strict=True)
                                ],
                                axis=1,
                            )
                            if not any(np.array_equal(index, c) for c in choices):
                                choices.append(index)
                nxt.extend(user.outputs)
        frontier = nxt
    return choices


def _value_bytes(value: ir.Value) -> int:
    from passes.partition.pipeline import value_bytes

    return value_bytes(value)


def _grow(
    seeds: list[_MatMul],
    choice: tuple[np.ndarray, ...],
    order: list[ir.Node],
    position: dict[ir.Node, int],
    matmuls: dict[ir.Node, _MatMul],
    taken: set[ir.Node],
    rule: _Propagation,
    graph_outputs: set[ir.Value],
) -> _Region:
    """Propagates the seeds' column layouts forward in graph order.

    A node joins the block when a rule shards it and its replicated inputs do not depend on the
    block (``tainted``: that would be a cycle through the exchange); a matmul whose activation
    is split along its inner dim joins as row-sharded; anything else stays whole and the sharded
    values it reads are all-gathered.
    """
    layouts: dict[ir.Value, Layout] = {}
    members: dict[ir.Node, _Member] = {}
    tainted: set[ir.Value] = set()

    def clean(value: ir.Value) -> bool:
        return value not in tainted and value not in layouts

    rule.layouts, rule.clean = layouts, clean
    for seed, index in zip(seeds, choice, strict=True):
        out = seed.node.outputs[0]
        rank = len(out.shape)
        layouts[out] = Layout(rank - 1, rank, index)
        member = _Member(seed.node, [layouts[out]], role="column")
        member.inputs[1] = _Replace(
            arrays=lambda s=seed, i=index: [s.sliced(row, rows=False) for row in i]
        )
        bias = seed.node.inputs[2] if seed.gemm and len(seed.node.inputs) > 2 else None
        if bias is not None:  # its columns, unless it broadcasts over them (_column_refusal)
            how = rule._slice_replicated(bias, len(bias.shape) - 1, seed.n, layouts[out])
            if isinstance(how, _Replace):
                member.inputs[2] = how
        members[seed.node] = member
    rows: dict[ir.Node, _MatMul] = {}
    start = min(position[s.node] for s in seeds)
    horizon = start  # the last node that reads a sharded value: nothing after it can join

    def reach(value: ir.Value) -> int:
        return max((position.get(user, -1) for user, _ in value.uses()), default=-1)

    for value in layouts:
        horizon = max(horizon, reach(value))
    for node in order[start:]:
        if position[node] > horizon:
            break
        if node in members:
            continue
        reads = [v for v in node.inputs if v is not None]
        sharded = [v for v in reads if v in layouts]
        dirty = any(v in tainted for v in reads)
        if not sharded:
            if dirty:
                tainted.update(node.outputs)
            continue
        member = None
        if node not in taken and not dirty:
            mm = matmuls.get(node)
            layout = layouts.get(node.inputs[0])
            if (
                mm is not None
                and sharded == [node.inputs[0]]
                and layout.axis == layout.rank - 1
                and layout.size == mm.k
            ):
                rows[node] = mm
                member = _Member(node, [None], role="row", drop_inputs_from=2)
                member.inputs[1] = _Replace(
                    arrays=lambda m=mm, i=layout.index: [m.sliced(row, rows=True) for row in i]
                )
                tainted.update(node.outputs)  # replicated again after the Sum
            else:
                member = rule(node, layouts, clean)
        if member is None:
            tainted.update(node.outputs)
            continue
        members[node] = member
        for value, layout in zip(node.outputs, member.outputs, strict=True):
            if layout is not None:
                layouts[value] = layout
                horizon = max(horizon, reach(value))
    region = _finish(seeds, members, rows, position, graph_outputs)
    # Branches that end in an all-gather instead of a row-sharded matmul (a residual add, a
    # norm) may cost more to gather late than at the branch point: try without them.
    useful = _useful(members, layouts, seeds, rows)
    if len(useful) < len(members):
        pruned = _finish(seeds, useful, rows, position, graph_outputs)
        if pruned.cost < region.cost:
            return pruned
    return region


def _useful(members, layouts, seeds, rows) -> dict[ir.Node, _Member]:
    """The seeds and the members on a path from a seed to a row-sharded matmul."""
    keep = {s.node for s in seeds}
    stack = list(rows)
    while stack:
        node = stack.pop()
        if node in keep:
            continue
        keep.add(node)
        for value in node.inputs:
            producer = value.producer() if value is not None and value in layouts else None
            if producer in members:
                stack.append(producer)
    return {node: member for node, member in members.items() if node in keep}


def _finish(seeds, members, rows, position, graph_outputs) -> _Region:
    """The region of ``members``: the sharded values others read are all-gathered."""
    layouts = {
        value: layout
        for node in members
        for value, layout in zip(node.outputs, members[node].outputs, strict=True)
        if layout is not None
    }
    gathers = [
        value
        for value in layouts
        if value in graph_outputs or any(user not in members for user, _ in value.uses())
    ]
    cost = sum(_value_bytes(v) for v in gathers)
    cost += sum(_value_bytes(node.outputs[0]) for node in rows)
    ordered = sorted(members.values(), key=lambda m: position[m.node])
    return _Region(seeds, ordered, layouts, rows, gathers, cost)


def _regions(
    graph: ir.Graph, order: list[ir.Node], shards: int, opset: int
) -> tuple[list[_Region], list[dict]]:
    """Groups in graph order, and the matmuls left whole (with the reason)."""
    position = {node: i for i, node in enumerate(order)}
    matmuls = {node: mm for node in order if (mm := _matmul(node)) is not None}
    graph_outputs = set(graph.outputs)
    rule = _Propagation(shards, opset)
    taken: set[ir.Node] = set()
    regions: list[_Region] = []
    for node in order:
        seed = matmuls.get(node)
        if seed is None or node in taken or not _column_ok(seed, shards):
            continue
        siblings = [
            mm
            for other, mm in matmuls.items()
            if other not in taken and mm.activation is seed.activation and _column_ok(mm, shards)
        ]
        siblings.sort(key=lambda mm: position[mm.node])
        options = [_layout_choices(mm, shards) for mm in siblings]
        best = None
        for choice in itertools.islice(itertools.product(*options), MAX_LAYOUT_CHOICES):
            region = _grow(siblings, choice, order, position, matmuls, taken, rule, graph_outputs)
            if best is None or region.cost < best.cost:
                best = region
        regions.append(best)
        taken.update(m.node for m in best.members)
    whole = [
        {
            "node": node.name,
            "op": node.op_type,
            "weight": [mm.k, mm.n],
            "reason": _column_refusal(mm, shards) or "not reached",
        }
        for node, mm in matmuls.items()
        if node not in taken
    ]
    return regions, whole


def _column_refusal(mm: _MatMul, shards: int) -> str | None:
    if mm.n % shards:
        return f"N={mm.n} is not a multiple of shards={shards}"
    if mm.n < shards:
        return f"N={mm.n} is smaller than shards={shards}"
    bias = mm.node.inputs[2] if mm.gemm and len(mm.node.inputs) > 2 else None
    if bias is not None and (
        bias.shape is None or (len(bias.shape) and bias.shape[-1] not in (1, mm.n))
    ):
        return "its bias has an unknown shape"
    if mm.node.outputs[0].shape is None or mm.node.outputs[0].shape[-1] != mm.n:
        return "its output has an unknown shape"
    return None


def _column_ok(mm: _MatMul, shards: int) -> bool:
    return _column_refusal(mm, shards) is None


# --------------------------------------------------------------------------------- rewrite
def _shard_name(name: str | None, k: int) -> str:
    return f"{name}{SUFFIX}{k}"


class _Writer:
    """Emits each group's shard copies and the nodes that combine them."""

    def __init__(self, graph: ir.Graph, shards: int) -> None:
        self.graph, self.shards = graph, shards
        self.counter = itertools.count()

    def name(self, value: ir.Value | None, fallback: str) -> str:
        if value is not None and value.name:
            return value.name
        return f"{fallback}_{next(self.counter)}"

    def constant(self, name: str, array: np.ndarray) -> ir.Value:
        """A new initializer; an existing one of that name and value is reused (shared shape
        constants), another name is found for a different value."""
        array = np.ascontiguousarray(array)
        base, count = name, itertools.count(1)
        while name in self.graph.initializers:
            existing = self.graph.initializers[name].const_value.numpy()
            if existing.dtype == array.dtype and np.array_equal(existing, array):
                return self.graph.initializers[name]
            name = f"{base}_{next(count)}"
        value = ir.Value(
            name=name,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            const_value=ir.tensor(array, name=name),
        )
        self.graph.register_initializer(value)
        return value

    def node(self, op, inputs, attributes=None, *, name, outputs, meta) -> ir.Node:
        return ir.node(
            op, inputs, attributes or {}, name=name, outputs=outputs, metadata_props=meta
        )

    def region(self, region: _Region, group: int) -> list[tuple[ir.Value, ir.Value]]:
        """Writes the group; returns (original value, its replacement) for each combined one."""
        shards = self.shards
        shard_values: dict[ir.Value, list[ir.Value]] = {}
        replaced: list[tuple[ir.Value, ir.Value]] = []
        gathers = set(region.gathers)
        for member in region.members:
            node = member.node
            node_name = node.name or f"node_{next(self.counter)}"
            new_nodes: list[ir.Node] = []
            constants = {
                slot: how.arrays() for slot, how in member.inputs.items() if how.arrays is not None
            }
            copies = []
            for k in range(shards):
                meta = {SHARD_KEY: str(k), GROUP_KEY: str(group)}
                count = len(node.inputs)
                if member.drop_inputs_from is not None:
                    count = min(count, member.drop_inputs_from)
                count = max([count, *(s + 1 for s in member.inputs)])
                inputs: list[ir.Value | None] = []
                for slot in range(count):
                    value = node.inputs[slot] if slot < len(node.inputs) else None
                    how = member.inputs.get(slot)
                    base = self.name(value, f"{node_name}_input{slot}")
                    if how is not None and how.arrays is not None:
                        value = self.constant(_shard_name(base, k), constants[slot][k])
                    elif how is not None:
                        axis, index = how.gather
                        positions = self.constant(_shard_name(f"{base}_positions", k), index[k])
                        sliced = ir.Value(name=_shard_name(f"{base}_slice", k))
                        new_nodes.append(
                            self.node(
                                "Gather",
                                [value, positions],
                                {"axis": axis},
                                name=_shard_name(f"{node_name}_slice{slot}", k),
                                outputs=[sliced],
                                meta=meta,
                            )
                        )
                        value = sliced
                    elif value is not None and value in shard_values:
                        value = shard_values[value][k]
                    inputs.append(value)
                outputs = []
                for value, layout in zip(node.outputs, member.outputs, strict=True):
                    dims = list(value.shape) if value.shape is not None else None
                    if layout is not None and dims is not None:
                        dims[layout.axis] = layout.shard_size
                    outputs.append(
                        ir.Value(
                            name=_shard_name(self.name(value, f"{node_name}_output"), k),
                            shape=ir.Shape(dims) if dims is not None else None,
                            type=value.type,
                        )
                    )
                attributes = {
                    name: attr
                    for name, attr in node.attributes.items()
                    if name not in member.attributes
                }
                attributes.update({n: a for n, a in member.attributes.items() if a is not None})
                copy = ir.Node(
                    node.domain,
                    node.op_type,
                    inputs,
                    attributes=[ir.Attr(a.name, a.type, a.value) for a in attributes.values()],
                    outputs=outputs,
                    name=_shard_name(node_name, k),
                    overload=node.overload,
                    metadata_props=meta,
                )
                copies.append(copy)
                new_nodes.append(copy)
            for i, value in enumerate(node.outputs):
                shard_values[value] = [c.outputs[i] for c in copies]
            if member.role == "row":
                new_nodes += self._all_reduce(
                    region.rows[node], [c.outputs[0] for c in copies], replaced
                )
            for value, layout in zip(node.outputs, member.outputs, strict=True):
                if value in gathers:
                    new_nodes += self._all_gather(value, layout, shard_values[value], replaced)
            self.graph.insert_before(node, new_nodes)
        return replaced

    def _all_reduce(self, mm: _MatMul, partials, replaced) -> list[ir.Node]:
        node, out = mm.node, mm.node.outputs[0]
        name = self.name(out, "row_sharded")
        meta = {COMBINE_KEY: "all-reduce"}
        total = ir.Value(name=f"{name}{SUFFIX}sum", shape=out.shape, type=out.type)
        nodes = [
            self.node("Sum", partials, name=f"{name}{SUFFIX}reduce", outputs=[total], meta=meta)
        ]
        bias = node.inputs[2] if mm.gemm and len(node.inputs) > 2 else None
        if bias is not None:  # added once, after the reduce
            beta = node.attributes.get_float("beta", 1.0)
            array = _constant(bias)
            if beta != 1.0 and array is not None:
                bias = self.constant(f"{name}{SUFFIX}bias", (array * beta).astype(array.dtype))
            elif beta != 1.0:
                dtype = out.dtype.numpy() if out.dtype is not None else np.float32
                scale = self.constant(f"{name}{SUFFIX}beta", np.asarray(beta, dtype=dtype))
                scaled = ir.Value(name=f"{name}{SUFFIX}scaled_bias")
                nodes.append(
                    self.node(
                        "Mul",
                        [bias, scale],
                        name=f"{name}{SUFFIX}beta_mul",
                        outputs=[scaled],
                        meta=meta,
                    )
                )
                bias = scaled
            biased = ir.Value(name=f"{name}{SUFFIX}biased", shape=out.shape, type=out.type)
            nodes.append(
                self.node(
                    "Add",
                    [total, bias],
                    name=f"{name}{SUFFIX}bias_add",
                    outputs=[biased],
                    meta=meta,
                )
            )
            total = biased
        replaced.append((out, total))
        return nodes

    def _all_gather(self, value, layout: Layout, slices, replaced) -> list[ir.Node]:
        name = self.name(value, "column_sharded")
        meta = {COMBINE_KEY: "all-gather"}
        joined = ir.Value(name=f"{name}{SUFFIX}concat", shape=value.shape, type=value.type)
        nodes = [
            self.node(
                "Concat",
                slices,
                {"axis": layout.axis},
                name=f"{name}{SUFFIX}gather",
                outputs=[joined],
                meta=meta,
            )
        ]
        order = layout.index.reshape(-1)
        if not np.array_equal(order, np.arange(order.size)):  # back to the original order
            inverse = self.constant(f"{name}{SUFFIX}order", np.argsort(order).astype(np.int64))
            ordered = ir.Value(name=f"{name}{SUFFIX}ordered", shape=value.shape, type=value.type)
            nodes.append(
                self.node(
                    "Gather",
                    [joined, inverse],
                    {"axis": layout.axis},
                    name=f"{name}{SUFFIX}reorder",
                    outputs=[ordered],
                    meta=meta,
                )
            )
            joined = ordered
        replaced.append((value, joined))
        return nodes


def _remove_orphans(graph: ir.Graph, values: Iterable[ir.Value]) -> None:
    """Drops the original weights (and a ``Transpose`` that only fed them) no node reads now."""
    outputs = set(graph.outputs)
    for value in values:
        if value.uses() or value in outputs:
            continue
        producer = value.producer()
        if producer is not None and all(
            not o.uses() and o not in outputs for o in producer.outputs
        ):
            inputs = list(producer.inputs)
            graph.remove(producer, safe=True)
            _remove_orphans(graph, [v for v in inputs if v is not None])
        elif value.is_initializer() and value.name in graph.initializers:
            graph.initializers.pop(value.name)


# ------------------------------------------------------------------------------- segments
def _bits(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def _is_constant_node(node: ir.Node) -> bool:
    return node.op_type == "Constant" and node.domain in _DOMAINS


def _schedule(graph: ir.Graph, groups: int) -> list[int]:
    """Orders the groups and gives every node its segment (``SEGMENT_KEY``); renumbers the
    groups in that order. A replicated node runs in the first segment after every group it
    depends on; a group's segment is its place in a topological order of the groups."""
    deps: dict[ir.Value, int] = {}
    reads: dict[ir.Node, int] = {}
    before = nx.DiGraph()
    before.add_nodes_from(range(groups))
    for node in graph:
        mask = 0
        for value in node.inputs:
            if value is not None:
                mask |= deps.get(value, 0)
        reads[node] = mask
        group = node.metadata_props.get(GROUP_KEY)
        if group is not None:
            g = int(group)
            before.add_edges_from((p, g) for p in _bits(mask) if p != g)
            mask |= 1 << g
        for value in node.outputs:
            deps[value] = mask
    if not nx.is_directed_acyclic_graph(before):
        raise InputError("partition(mode=tensor): the groups depend on each other in a cycle")
    place = {g: i for i, g in enumerate(nx.lexicographical_topological_sort(before))}
    for node in graph:
        if _is_constant_node(node):
            continue
        group = node.metadata_props.get(GROUP_KEY)
        if group is not None:
            segment = place[int(group)]
            node.metadata_props[GROUP_KEY] = str(segment)
        else:
            segment = max((place[g] + 1 for g in _bits(reads[node])), default=0)
        node.metadata_props[SEGMENT_KEY] = str(segment)
    return [g for g, _ in sorted(place.items(), key=lambda item: item[1])]


def _segment_plan(graph: ir.Graph, shards: int, groups: int) -> list[dict]:
    """Each segment's per-shard interface: inputs, outputs, and the values it sends the other
    shards (its group's slices or partial sums)."""
    graph_inputs = {v for v in graph.inputs if not v.is_initializer()}
    graph_outputs = set(graph.outputs)
    segment_of = {}
    for node in graph:
        if not _is_constant_node(node):
            shard = node.metadata_props.get(SHARD_KEY)
            segment_of[node] = (
                int(node.metadata_props[SEGMENT_KEY]),
                None if shard is None else int(shard),
            )
    plan = []
    for j in range(groups + 1):
        entry = {"segment": j, "group": j if j < groups else None, "shards": []}
        for w in range(shards):
            mine = [n for n, (s, k) in segment_of.items() if s == j and k in (None, w)]
            mine_set = set(mine)
            inputs: list[str] = []
            outputs: list[str] = []
            exchange: list[str] = []
            for node in mine:
                for value in node.inputs:
                    if value is None or value.is_initializer() or value.const_value is not None:
                        continue
                    producer = value.producer()
                    if producer in mine_set or (
                        producer is not None and _is_constant_node(producer)
                    ):
                        continue
                    if producer is None and value not in graph_inputs:
                        continue  # an outer-scope value (not at this level)
                    if value.name not in inputs:
                        inputs.append(value.name)
                for value in node.outputs:
                    later = any(segment_of.get(user, (j, None))[0] > j for user, _ in value.uses())
                    if later or value in graph_outputs:
                        outputs.append(value.name)
                        if segment_of[node][1] is not None:
                            exchange.append(value.name)
            entry["shards"].append(
                {"nodes": len(mine), "inputs": inputs, "outputs": outputs, "exchange": exchange}
            )
        if any(s["nodes"] for s in entry["shards"]):
            plan.append(entry)
    return plan


# -------------------------------------------------------------------------------- the pass
def shard_model(model: ir.Model, shards: int) -> dict:
    """Rewrites ``model`` for ``shards``-way tensor parallelism (in place); returns the plan.

    Raises :class:`InputError` when no MatMul/Gemm weight can be split ``shards`` ways.
    """
    from passes.partition.pipeline import topological_nodes

    if shards < 2:
        raise InputError(f"partition(mode=tensor): shards must be at least 2, not {shards}")
    if model.metadata_props.get("compiler.partition") or any(
        SEGMENT_KEY in n.metadata_props for n in model.graph
    ):
        raise InputError("partition(mode=tensor): the model is partitioned already")
    ir.passes.common.NameFixPass()(model)  # the plan and the shards' values go by name
    graph = model.graph
    order = topological_nodes(graph)
    if order != list(graph):
        graph.sort()
        order = list(graph)
    opset = model.opset_imports.get("", 1)
    regions, whole = _regions(graph, order, shards, opset)
    if not regions:
        found = "; ".join(
            f"{w['node']!r} ({w['op']}, weight {w['weight']}): {w['reason']}" for w in whole
        )
        raise InputError(
            f"partition(mode=tensor): no MatMul/Gemm weight can be split {shards} ways"
            + (
                f" ({found})"
                if found
                else " (the model has no MatMul/Gemm with a constant 2-D weight)"
            )
        )
    writer = _Writer(graph, shards)
    weights = []
    groups_info = []
    for g, region in enumerate(regions):
        weights += [m.node.inputs[1] for m in region.members if m.role in ("column", "row")]
        replaced = writer.region(region, g)
        for original, new in replaced:
            original.replace_all_uses_with(new, replace_graph_outputs=True)
        graph.remove([m.node for m in region.members], safe=True)
        for original, new in replaced:
            new.name = original.name
        groups_info.append(
            {
                "column": [s.node.name for s in region.seeds],
                "row": [n.name for n in region.rows],
                "all_gather": [v.name for v in region.gathers],
                "sharded_nodes": len(region.members),
                "exchange_bytes": region.cost,
            }
        )
    _remove_orphans(graph, [w for w in weights if w is not None])
    order = _schedule(graph, len(regions))
    groups_info = [groups_info[g] for g in order]
    flops = {"sharded_per_shard": 0, "replicated": 0}
    for node in graph:
        shard = node.metadata_props.get(SHARD_KEY)
        if shard is None:
            flops["replicated"] += node_flops(node) or 0
        elif shard == "0":
            flops["sharded_per_shard"] += node_flops(node) or 0
    for i, info in enumerate(groups_info):
        info["group"] = i
        info["kind"] = ("all-reduce" if info["row"] else "") + (
            ("+" if info["row"] else "") + "all-gather" if info["all_gather"] else ""
        )
    return {
        "mode": "tensor",
        "shards": shards,
        "groups": groups_info,
        "segments": _segment_plan(graph, shards, len(regions)),
        "replicated_matmuls": whole,
        "flops": flops,
        "exchange_bytes": sum(g["exchange_bytes"] for g in groups_info),
        "graph_inputs": [v.name for v in graph.inputs if not v.is_initializer()],
        "graph_outputs": [v.name for v in graph.outputs],
    }
