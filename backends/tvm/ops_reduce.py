"""Reductions and scans along axes that TVM's Relax importer lacks or gets wrong.

* ``Reduce*`` (TVM's converters, wrapped): bool data (ReduceMax/ReduceMin), float
  ReduceMax/ReduceMin of infinities, and reductions over an empty set (a reduced axis of size
  0), whose outputs are the reduction's identity.
* ``ArgMax``/``ArgMin``: TVM's kernels return -1 when no element beats the lowest (highest)
  finite value, e.g. a row of -inf.
* ``CumProd``, ``LpNormalization``, ``Det``: missing in TVM.
* ``BatchNormalization`` in training mode, ``TopK`` of unsigned integers: TVM's converters get
  them wrong; each class says how.
"""

from __future__ import annotations

import itertools

import numpy as np
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from backends.tvm.ops_common import (
    constant,
    downcast,
    dtype_of,
    fail,
    input_at,
    is_float,
    np_dtype,
    rank_of,
    scalar,
    static_shape,
    upcast,
)

__all__ = ["CONVERTERS", "DET_MAX_ORDER"]

DET_MAX_ORDER = 6  # Det's Leibniz formula: 720 terms of 6 factors at most


def _reduced_axes(data, inputs, attr: dict, params, op: str) -> list[int] | None:
    """The axes a reduction reduces, normalized to ``[0, rank)`` and sorted (every axis when
    none are given); None when the node reduces nothing (``noop_with_empty_axes``)."""
    axes = attr.get("axes")
    if axes is None and input_at(inputs, 1) is not None:
        axes = constant(inputs[1], params, op, attr, "axes").reshape(-1).tolist()
    rank = rank_of(data)
    if not axes:
        if attr.get("noop_with_empty_axes", 0):
            return None
        axes = range(rank)
    return sorted({int(axis) + rank if axis < 0 else int(axis) for axis in axes})


def _reduced_count(data, inputs, attr: dict, params, op: str):
    """How many elements each output of a reduction reduces (an int, or a ``PrimExpr`` for
    symbolic dims); None when the node reduces nothing (``noop_with_empty_axes``)."""
    axes = _reduced_axes(data, inputs, attr, params, op)
    if axes is None:
        return None
    count = 1
    for axis in axes:
        count = count * data.ty.shape[axis]
    return count


def _te_reduce(bb, data, axes: list[int], keepdims: bool, reduce, name: str):
    """One TE kernel reducing ``data`` over ``axes``: ``reduce(x, index, reduce_axes)`` builds
    each output element from ``x(*index)`` (reduced axes indexed by their ``reduce_axes``).

    A reduction over ``(index, value)`` pairs (:func:`_argreduce`) returns both of its outputs;
    the first, the index, is the result."""

    def compute(x):
        shape = list(x.shape)
        reduced = {a: te.reduce_axis((0, shape[a]), f"k{a}") for a in axes}
        if keepdims:
            out_shape = [1 if a in reduced else d for a, d in enumerate(shape)]
        else:
            out_shape = [d for a, d in enumerate(shape) if a not in reduced]

        def body(*out):
            position = iter(out)
            index = []
            for a in range(len(shape)):
                if a in reduced:
                    index.append(reduced[a].var)
                    if keepdims:
                        next(position)
                else:
                    index.append(next(position))
            return reduce(x, index, list(reduced.values()))

        return te.compute(out_shape, body, name)

    result = bb.emit_te(compute, data)
    if isinstance(result.ty, relax.TupleType):
        result = bb.emit(relax.TupleGetItem(result, 0))
    return result


def _float_extreme_reducer(largest: bool):
    """max (min) with identity -inf (+inf): TVM's ``te.max``/``te.min`` start from the
    dtype's lowest (highest) finite value, so a max over ``[-inf, -inf]`` is ``-3.4e38``."""
    combine = tirx.Max if largest else tirx.Min
    infinity = -np.inf if largest else np.inf
    return te.comm_reducer(
        lambda a, b: combine(a, b),
        lambda dtype: tirx.const(infinity, dtype),
        name="max_from_inf" if largest else "min_from_inf",
    )


def _float_extreme(bb, data, axes: list[int], keepdims: bool, largest: bool):
    """ReduceMax (``largest``) or ReduceMin of float ``data``, the identity ∓inf.

    ``max_i x_i`` with ``max(∅) = -inf``: all elements -inf give -inf (TVM: -3.4e38 for float32,
    -65504 for float16), which ``x == -inf`` tests downstream rely on (the fully masked rows of
    Attention's expanded body). NaN handling is TVM's max/min's. An empty reduced axis leaves
    the output unwritten (the kernel's loops are empty): :func:`_reduction` fills it."""
    reducer = _float_extreme_reducer(largest)
    return _te_reduce(
        bb,
        data,
        axes,
        keepdims,
        lambda x, index, k: reducer(x(*index), axis=k),
        "reduce_max" if largest else "reduce_min",
    )


_EXTREMES = ("ReduceMax", "ReduceMin")


def _reduction(base: type[OnnxOpConverter], op: str, empty_value) -> type[OnnxOpConverter]:
    """TVM's ``op`` converter, fixed for bool data, float extremes and empty sets.

    * bool data (ReduceMax/ReduceMin: TVM cannot "decide min_value for bool"): reduced as uint8
      and cast back.
    * float ReduceMax/ReduceMin: reduced from -inf/+inf (:func:`_float_extreme`), not from the
      lowest/highest finite value as TVM does.
    * Reduced axes of size 0: each output reduces an empty set and is the reduction's identity
      (``empty_value(dtype)``: 0 for sums, 1 for products, -inf for max and log-sums, +inf for
      min); TVM's kernels leave such outputs uninitialized. A size known only at run time (TVM
      imports a 0 dim as symbolic) selects the identity at run time.
    """

    class Reduction(base):
        @classmethod
        def get_converter(cls, opset):
            convert = base.get_converter(opset)

            def reduce(bb, inputs, attr, params):
                data = inputs[0]
                if dtype_of(data) == "bool":
                    cast = [bb.normalize(relax.op.astype(data, "uint8")), *inputs[1:]]
                    return relax.op.astype(bb.normalize(reduce(bb, cast, attr, params)), "bool")
                if op in _EXTREMES and is_float(dtype_of(data)):
                    axes = _reduced_axes(data, inputs, attr, params, op)
                    if not axes:
                        return data  # nothing reduced: noop_with_empty_axes, or a scalar
                    keepdims = bool(attr.get("keepdims", 1))
                    result = _float_extreme(bb, data, axes, keepdims, largest=op == "ReduceMax")
                else:
                    result = bb.normalize(convert(bb, inputs, attr, params))
                count = _reduced_count(data, inputs, attr, params, op)
                if count is None or (isinstance(count, (int, tirx.IntImm)) and int(count) > 0):
                    return result
                count = bb.normalize(
                    relax.op.reshape(relax.op.shape_to_tensor(relax.ShapeExpr([count])), ())
                )
                empty = relax.op.equal(count, relax.const(0, "int64"))
                return relax.op.where(empty, empty_value(dtype_of(result)), result)

            return reduce

    Reduction.__name__ = Reduction.__qualname__ = op
    return Reduction


def _extreme(sign: int):
    """-inf/+inf for floats, the dtype's lowest/highest value for integers."""

    def value(dtype: str):
        if is_float(dtype):
            return scalar(sign * np.inf, dtype)
        info = np.iinfo(np_dtype(dtype))
        return scalar(info.max if sign > 0 else info.min, dtype)

    return value


def _zero(dtype: str):
    return scalar(0, dtype)


def _one(dtype: str):
    return scalar(1, dtype)


_REDUCTIONS = {
    "ReduceMax": _extreme(-1),
    "ReduceMin": _extreme(+1),
    "ReduceSum": _zero,
    "ReduceSumSquare": _zero,
    "ReduceL1": _zero,
    "ReduceL2": _zero,
    "ReduceProd": _one,
    "ReduceLogSum": _extreme(-1),
    "ReduceLogSumExp": _extreme(-1),
}


def _reductions() -> dict[str, type[OnnxOpConverter]]:
    return {
        op: _reduction(getattr(onnx_frontend, op), op, empty) for op, empty in _REDUCTIONS.items()
    }


def _argreduce(largest: bool, last: bool, dtype: str):
    """A ``te.comm_reducer`` over ``(index, value)`` pairs: the index of the largest
    (``largest``) or smallest value, ties to the first index (the last when ``last``), NaN
    above every number (numpy's ``argmax``/``argmin`` return the first NaN)."""
    floating = is_float(dtype)

    def combine(lhs, rhs):
        (i1, v1), (i2, v2) = lhs, rhs
        better = v2 > v1 if largest else v2 < v1
        tie = v2 == v1
        if floating:
            nan1, nan2 = tirx.isnan(v1), tirx.isnan(v2)
            better = tirx.Or(tirx.And(nan2, tirx.Not(nan1)), tirx.And(tirx.Not(nan1), better))
            tie = tirx.Or(tie, tirx.And(nan1, nan2))
        index_wins = i2 > i1 if last else i2 < i1
        take = tirx.Or(better, tirx.And(tie, index_wins))
        return tirx.Select(take, i2, i1), tirx.Select(take, v2, v1)

    if floating:
        start = -np.inf if largest else np.inf
    else:
        info = np.iinfo(np_dtype(dtype))
        start = info.min if largest else info.max
    # The identity's index loses every tie, so even a row of -inf (argmax) yields a real index.
    worst = -1 if last else np.iinfo(np.int64).max

    def identity(index_dtype, value_dtype):
        return tirx.const(worst, index_dtype), tirx.const(start, value_dtype)

    return te.comm_reducer(combine, identity, name="argmax" if largest else "argmin")


def _arg_extreme(largest: bool) -> type[OnnxOpConverter]:
    """``ArgMax`` (``largest``) or ``ArgMin`` along ``axis``, with ``keepdims`` and
    ``select_last_index``: one TE reduction over (index, value) pairs (:func:`_argreduce`).

    TVM's kernels start from (-1, lowest finite value) and keep the start on ties and when
    nothing exceeds it, so ``argmax([-inf, -inf])`` is -1 (ArgMin of +inf rows likewise).
    """
    op = "ArgMax" if largest else "ArgMin"

    class ArgExtreme(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x = inputs[0]
            rank = rank_of(x)
            axis = attr.get("axis", 0)
            axis = axis + rank if axis < 0 else axis
            if not 0 <= axis < rank:
                raise fail(op, attr, f"axis {attr.get('axis', 0)} is out of range for rank {rank}")
            reducer = _argreduce(largest, bool(attr.get("select_last_index", 0)), dtype_of(x))

            def reduce(data, index, k):
                position = tirx.Cast("int64", k[0].var)
                return reducer((position, data(*index)), axis=k)

            return _te_reduce(bb, x, [axis], bool(attr.get("keepdims", 1)), reduce, op.lower())

    ArgExtreme.__name__ = ArgExtreme.__qualname__ = op
    return ArgExtreme


class LpNormalization(OnnxOpConverter):
    """``LpNormalization``: ``x / ||x||_p`` along ``axis`` (p = 1 or 2), 0 where the norm is 0.

    ``||x||_1 = Σ|x|`` as the spec and onnxruntime define it (onnx's reference omits the abs).
    """

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x = inputs[0]
        p = attr.get("p", 2)
        if p not in (1, 2):
            raise fail("LpNormalization", attr, f"p must be 1 or 2, got {p}")
        dtype = dtype_of(x)
        xc = upcast(bb, x)
        axis = attr.get("axis", -1)
        if p == 1:
            norm = relax.op.sum(relax.op.abs(xc), axis=[axis], keepdims=True)
        else:
            norm = relax.op.sqrt(
                relax.op.sum(relax.op.multiply(xc, xc), axis=[axis], keepdims=True)
            )
        norm = bb.normalize(norm)
        zero = scalar(0.0, dtype_of(xc))
        is_zero = relax.op.equal(norm, zero)
        safe = relax.op.where(is_zero, scalar(1.0, dtype_of(xc)), norm)
        y = relax.op.where(is_zero, zero, relax.op.divide(xc, safe))
        return downcast(bb, y, dtype)


class CumProd(OnnxOpConverter):
    """``CumProd`` (opset 26) along a constant ``axis``, with ``exclusive`` and ``reverse``.

    ``relax.op.cumprod`` (a sequential product, exact as numpy's) on X, flipped along the axis
    before and after for ``reverse``.
    """

    @classmethod
    def _impl_v26(cls, bb, inputs, attr, params):
        x = inputs[0]
        axis = int(constant(inputs[1], params, "CumProd", attr, "axis").reshape(-1)[0])
        axis = axis + rank_of(x) if axis < 0 else axis
        reverse = bool(attr.get("reverse", 0))
        if reverse:
            x = relax.op.flip(x, axis)
        y = relax.op.cumprod(x, axis=axis, exclusive=bool(attr.get("exclusive", 0)))
        return relax.op.flip(y, axis) if reverse else y


class Det(OnnxOpConverter):
    """``Det`` of ``[..., n, n]`` by the Leibniz formula ``Σ_σ sign(σ) Π_i A[i, σ(i)]``.

    One gather of the ``n!`` permutations' entries, a product and a signed sum: exact in
    structure, for ``n <= DET_MAX_ORDER`` (720 terms of 6 factors); larger matrices are refused
    (they would need a pivoting LU). Half types are computed in float32.
    """

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        x = inputs[0]
        shape = static_shape(x, "Det", attr)
        n = shape[-1]
        if len(shape) < 2 or shape[-2] != n:
            raise fail("Det", attr, f"needs square matrices [..., n, n], got {shape}")
        if n > DET_MAX_ORDER:
            raise fail("Det", attr, f"matrices larger than {DET_MAX_ORDER}x{DET_MAX_ORDER}")
        dtype = dtype_of(x)
        xc = upcast(bb, x)
        permutations = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
        signs = np.array([_permutation_sign(p) for p in permutations])
        flat = relax.op.reshape(xc, [*shape[:-2], n * n])
        entries = permutations + np.arange(n) * n  # flat index of A[i, σ(i)]
        products = relax.op.prod(relax.op.take(flat, relax.const(entries), axis=-1), axis=[-1])
        signed = relax.op.multiply(products, relax.const(signs.astype(np_dtype(dtype_of(xc)))))
        return downcast(bb, relax.op.sum(signed, axis=[-1]), dtype)


def _permutation_sign(permutation) -> int:
    """+1 for an even permutation, -1 for an odd one (by counting inversions)."""
    inversions = sum(
        1
        for i in range(len(permutation))
        for j in range(i + 1, len(permutation))
        if permutation[i] > permutation[j]
    )
    return -1 if inversions % 2 else 1


class BatchNormalization(onnx_frontend.BatchNormalization):
    """``BatchNormalization`` with ``training_mode=1`` (opset 14+): batch statistics.

    ``y = scale · (x − μ_B) / sqrt(σ²_B + ε) + bias`` with the batch mean and biased variance
    over every axis but 1, and the running statistics ``mean · momentum + μ_B · (1 −
    momentum)`` (likewise for the variance), as onnx's reference. TVM's batch_norm weighs the
    running statistics the other way round. Inference mode goes to TVM.
    """

    @classmethod
    def _impl_v15(cls, bb, inputs, attr, params):
        if not attr.get("training_mode", 0):
            return super()._impl_v15(bb, inputs, attr, params)
        x, scale, bias, mean, var = inputs[:5]
        dtype = dtype_of(x)
        momentum, epsilon = attr.get("momentum", 0.9), attr.get("epsilon", 1e-5)
        xc = upcast(bb, x)
        compute = dtype_of(xc)
        rank = rank_of(x)
        axes = [a for a in range(rank) if a != 1]
        channel = [-1] + [1] * (rank - 2)

        def per_channel(v):
            return relax.op.reshape(bb.normalize(relax.op.astype(v, compute)), channel)

        batch_mean = bb.normalize(relax.op.mean(xc, axis=axes, keepdims=True))
        centered = bb.normalize(relax.op.subtract(xc, batch_mean))
        batch_var = bb.normalize(
            relax.op.mean(relax.op.multiply(centered, centered), axis=axes, keepdims=True)
        )
        normalized = relax.op.divide(
            centered, relax.op.sqrt(relax.op.add(batch_var, scalar(epsilon, compute)))
        )
        y = relax.op.add(relax.op.multiply(normalized, per_channel(scale)), per_channel(bias))

        def running(old, batch):
            old_c = relax.op.astype(old, compute)
            new = relax.op.add(
                relax.op.multiply(old_c, scalar(momentum, compute)),
                relax.op.multiply(relax.op.reshape(batch, [-1]), scalar(1 - momentum, compute)),
            )
            return downcast(bb, new, dtype_of(old))

        return relax.Tuple(
            [
                downcast(bb, y, dtype),
                bb.normalize(running(mean, batch_mean)),
                bb.normalize(running(var, batch_var)),
            ]
        )


class TopK(onnx_frontend.TopK):
    """``TopK`` of unsigned integers: TVM's sort kernel has no uint64 (and no unsigned) path.

    Sorted on an order-preserving int64 key (uint8/16/32 widen; uint64 flips its top bit and is
    reinterpreted), then the values are gathered from X by the indices.
    """

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        x = inputs[0]
        dtype = dtype_of(x)
        if not dtype.startswith("uint"):
            return super()._impl_v11(bb, inputs, attr, params)
        if dtype == "uint64":
            key = bb.emit_te(
                lambda t: te.compute(
                    t.shape,
                    lambda *i: tirx.reinterpret("int64", t(*i) ^ tirx.const(1 << 63, "uint64")),
                    "uint64_key",
                ),
                x,
            )
        else:
            key = relax.op.astype(x, "int64")
        result = super()._impl_v11(bb, [key, *inputs[1:]], attr, params)
        indices = bb.emit(relax.TupleGetItem(bb.normalize(result), 1))
        axis = attr.get("axis", -1)
        values = relax.op.gather_elements(x, indices, axis)
        return relax.Tuple([bb.normalize(values), indices])


CONVERTERS: dict[str, type[OnnxOpConverter]] = {
    **_reductions(),
    "ArgMax": _arg_extreme(largest=True),
    "ArgMin": _arg_extreme(largest=False),
    "CumProd": CumProd,
    "LpNormalization": LpNormalization,
    "Det": Det,
    "BatchNormalization": BatchNormalization,
    "TopK": TopK,
}
