"""Extensions to TVM's Relax ONNX importer for ops our passes emit.

TVM 0.27's importer looks converters up in ``onnx_frontend._get_convert_map()``, a function that
builds its table on every call, and offers no registration hook. :func:`extended_converters`
wraps that function for the duration of one import, adding or replacing entries from
:data:`CONVERTERS`; it restores the original on exit (imports are not run concurrently).

* ``PackedMatMul``/``PackedGather`` (compiler.tvm): what ``MatMulNBits``/``GatherBlockQuantized``
  are lowered to before import, see
  :mod:`backends.tvm.quantized`.
* ``PanelMatMul``/``PanelGather`` (compiler.tvm): float32 products on constant weights (and the
  row lookups of a tied embedding), see :mod:`backends.tvm.panel_gemm`.
* ``SkipLayerNormalization`` (com.microsoft): TVM's own converter requires ``beta`` and
  ``bias`` and drops the ``input_skip_bias_sum`` output, which onnxscript's residual+LayerNorm
  fusion emits without beta/bias and whose sum output feeds the next residual. Ours computes
  ``s = input + skip [+ bias]``, ``LayerNorm(s, gamma, beta or 0)`` over the last axis and
  returns ``(output, 0, 0, s)`` (mean and inverse std are not materialized; nothing we emit reads
  them).

Standard ops TVM's importer lacks or converts wrongly, found by ``tools/conformance.py`` (the
ONNX backend node tests; each class says what TVM gets wrong):

* ``Attention`` (opset 23-25, :class:`StandardAttention`; com.microsoft ``Attention`` still goes
  to TVM's converter), ``RotaryEmbedding``, ``RMSNormalization``, ``LayerNormalization`` (with
  its Mean/InvStdDev outputs), ``OneHot`` with runtime values;
* ``Shape`` of a static shape is a constant, ``Constant`` accepts ``value_float(s)`` and
  ``value_int(s)``, and the ops in :data:`FOLDABLE_OPS` are evaluated at import time (onnx's
  reference implementation) when all their inputs are small constants, so shape arithmetic
  (Shape -> Slice -> Div -> Concat -> Reshape) reaches the ops that need a constant shape.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import ml_dtypes
import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter, get_type

__all__ = ["CONVERTERS", "extended_converters"]


def _input(inputs, index: int):
    return inputs[index] if len(inputs) > index else None


class SkipLayerNormalization(OnnxOpConverter):
    """com.microsoft SkipLayerNormalization with optional beta/bias and the sum output."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        data, skip, gamma = inputs[0], inputs[1], inputs[2]
        beta, bias = _input(inputs, 3), _input(inputs, 4)
        epsilon = attr.get("epsilon", 1e-12)
        total = relax.op.add(data, skip)
        if bias is not None:
            total = relax.op.add(total, bias)
        total = bb.normalize(total)
        dtype = total.ty.dtype
        if beta is None:
            beta = relax.op.zeros(gamma.ty.shape, dtype)
        output = relax.op.nn.layer_norm(total, gamma, beta, axes=-1, epsilon=epsilon)
        placeholder = relax.const(0, dtype=dtype)
        return relax.Tuple([output, placeholder, placeholder, total])


# ---------------------------------------------------------------------------------------------
# Standard ONNX ops TVM 0.27's importer lacks or converts wrongly (measured by
# tools/conformance.py on the ONNX backend node tests).


def _shape(expr) -> list[int]:
    """The static shape of ``expr``; the conformance cases and our artifacts are static."""
    shape = expr.ty.shape
    if shape is None or not all(isinstance(d, (int, tirx.IntImm)) for d in shape):
        raise ValueError(f"needs a static shape, got {shape}")
    return [int(d) for d in shape]


def _rank(expr) -> int:
    """The rank of ``expr``, whose dims may be symbolic (a dynamic sequence length)."""
    return int(expr.ty.ndim)


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _scalar(value: float, dtype: str):
    """A scalar constant of ``dtype`` (through float32 for dtypes numpy cannot hold)."""
    if dtype in ("float32", "float64", "float16"):
        return relax.const(value, dtype)
    return relax.op.astype(relax.const(value, "float32"), dtype)


def _np_dtype(dtype: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)


def _to_bias(bb, mask, dtype: str):
    """A boolean mask (True: attend) as an additive bias 0 / -inf; a float mask as is."""
    if _dtype(mask) == "bool":
        return bb.normalize(relax.op.where(mask, _scalar(0.0, dtype), _scalar(-np.inf, dtype)))
    return mask if _dtype(mask) == dtype else bb.normalize(relax.op.astype(mask, dtype))


class StandardAttention(OnnxOpConverter):
    """ONNX ``Attention`` (opset 23-25): scaled dot-product attention with masks, KV cache, GQA.

    Mirrors ``onnx.reference.ops.op_attention``: 3D inputs are split into heads
    (``q_num_heads``/``kv_num_heads``); Q and K are each scaled by ``sqrt(scale)``
    (``scale`` defaults to ``1/sqrt(head_size)``); ``past_key``/``past_value`` are concatenated
    in front of K/V (and returned as ``present_*``); the bias is the mask (a bool mask as
    0/-inf, padded with -inf to the KV length), plus the bottom-right causal mask when
    ``is_causal`` (offset by the past length, or per batch by ``nonpad_kv_seqlen - q_len``), plus
    the opset-25 sliding window (query ``i`` at position ``p = i + offset`` attends keys
    ``p - left_window_size <= j <= p + right_window_size``, a bound of -1 unbounded), plus
    the ``nonpad_kv_seqlen`` padding mask; KV heads are repeated for grouped queries; ``softcap``
    applies ``c * tanh(x / c)`` before the bias; a row whose bias is all -inf gives zeros; the
    fourth output is selected by ``qk_matmul_output_mode`` (0, 1: QK^T after softcap, 2: plus the
    bias, 3: after softmax). ``softmax_precision`` casts the softmax input. With half-precision
    inputs ``Q·Kᵀ`` accumulates in float32 and the bias, softmax and ``P·V`` run in float32,
    ``Y`` rounded once (TVM's half matmuls and softmax accumulate in half precision, 2 ULPs off
    the reference; rounding P to half before ``P·V``, as the reference does, lands 2 ULPs off too).

    TVM's table maps ``Attention`` to com.microsoft's converter (attribute ``num_heads``); nodes
    with that attribute are handed to it.
    """

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        if "num_heads" in attr:  # com.microsoft Attention
            return onnx_frontend.Attention._impl_v1(bb, inputs, attr, params)
        return cls._impl_v23(bb, inputs, attr, params)

    @classmethod
    def _impl_v23(cls, bb, inputs, attr, params):
        if "num_heads" in attr:
            return onnx_frontend.Attention._impl_v1(bb, inputs, attr, params)
        q, k, v = inputs[0], inputs[1], inputs[2]
        mask, past_k, past_v, nonpad = (_input(inputs, i) for i in (3, 4, 5, 6))
        dtype = _dtype(q)
        rank = len(_shape(q))
        if rank == 3:
            q_heads, kv_heads = attr["q_num_heads"], attr["kv_num_heads"]
            q, k, v = (
                bb.normalize(cls._split_heads(x, heads))
                for x, heads in ((q, q_heads), (k, kv_heads), (v, kv_heads))
            )
        batch, q_heads, q_len, head_size = _shape(q)
        scale = attr.get("scale")
        scale = 1.0 / math.sqrt(head_size) if scale is None else scale
        # sqrt(scale) rounded to the inputs' dtype, as the reference and the function body do.
        root = float(np.asarray(math.sqrt(scale), dtype=np.float32).astype(_np_dtype(dtype)))
        if past_k is not None:
            k = bb.normalize(relax.op.concat([past_k, k], axis=2))
            v = bb.normalize(relax.op.concat([past_v, v], axis=2))
        present_k, present_v = k, v
        root = _scalar(root, dtype)
        # Half inputs: Q·Kᵀ accumulates in float32 (numpy's half matmul does; TVM's accumulates
        # in half, 2 ULPs off); bias, softmax and P·V run in float32, rounded once at the end.
        io_dtype = dtype
        dtype = "float32" if dtype in ("float16", "bfloat16") else dtype
        kv_heads, kv_len = _shape(k)[1], _shape(k)[2]

        bias = None
        if mask is not None:
            pad = kv_len - _shape(mask)[-1]
            if pad > 0:
                widths = [0] * (2 * len(_shape(mask)))
                widths[-1] = pad
                fill = False if _dtype(mask) == "bool" else -np.inf
                mask = bb.normalize(relax.op.nn.pad(mask, widths, pad_value=fill))
            bias = _to_bias(bb, mask, dtype)
        left, right = attr.get("left_window_size", -1), attr.get("right_window_size", -1)
        if attr.get("is_causal", 0) or left >= 0 or right >= 0:
            # Query i sits at position p = i + offset among the keys; diff = p - j.
            rows = relax.const(np.arange(q_len, dtype=np.int64).reshape(q_len, 1), "int64")
            cols = relax.const(np.arange(kv_len, dtype=np.int64).reshape(1, kv_len), "int64")
            if past_k is None and nonpad is not None:
                offset = relax.op.subtract(
                    relax.op.reshape(relax.op.astype(nonpad, "int64"), (batch, 1, 1, 1)),
                    relax.const(q_len, "int64"),
                )
            else:
                offset = relax.const(_shape(past_k)[2] if past_k is not None else 0, "int64")
            diff = bb.normalize(relax.op.subtract(relax.op.add(rows, offset), cols))
            limits = []  # (bound, sign): allowed where sign * diff <= bound
            if attr.get("is_causal", 0):
                limits.append((0, -1))  # j <= p
            if left >= 0:
                limits.append((left, 1))  # p - left <= j
            if right >= 0:
                limits.append((right, -1))  # j <= p + right
            allowed = None
            for bound, sign in limits:
                side = diff if sign > 0 else relax.op.negative(diff)
                ok = relax.op.less_equal(side, relax.const(bound, "int64"))
                allowed = ok if allowed is None else relax.op.logical_and(allowed, ok)
            window = relax.op.where(allowed, _scalar(0.0, dtype), _scalar(-np.inf, dtype))
            bias = bb.normalize(window if bias is None else relax.op.add(bias, window))
        if nonpad is not None:
            cols = relax.const(np.arange(kv_len, dtype=np.int64).reshape(1, 1, 1, kv_len), "int64")
            lengths = relax.op.reshape(relax.op.astype(nonpad, "int64"), (batch, 1, 1, 1))
            padding = relax.op.where(
                relax.op.less(cols, lengths), _scalar(0.0, dtype), _scalar(-np.inf, dtype)
            )
            bias = bb.normalize(padding if bias is None else relax.op.add(bias, padding))

        if q_heads != kv_heads and q_heads % kv_heads == 0:
            k = relax.op.repeat(k, q_heads // kv_heads, axis=1)
            v = relax.op.repeat(v, q_heads // kv_heads, axis=1)
        scores = relax.op.matmul(
            relax.op.multiply(q, root),
            relax.op.permute_dims(relax.op.multiply(k, root), [0, 1, 3, 2]),
            out_dtype=dtype,
        )
        softcap = attr.get("softcap", 0.0)
        if softcap and softcap > 0:
            cap = _scalar(softcap, dtype)
            scores = relax.op.multiply(relax.op.tanh(relax.op.divide(scores, cap)), cap)
        scores = bb.normalize(scores)
        biased = scores if bias is None else bb.normalize(relax.op.add(scores, bias))
        mode = attr.get("qk_matmul_output_mode", 0)
        qk_output = biased if mode == 2 else scores
        precision = attr.get("softmax_precision")
        logits = biased
        if precision:
            logits = relax.op.astype(logits, get_type(precision))
        probs = bb.normalize(relax.op.nn.softmax(logits, axis=-1))
        if bias is not None:
            # Rows with no attendable key: zeros (softmax of all -inf is NaN). Compared with
            # the lowest finite value, not -inf: TVM's LLVM code assumes no infinities.
            lowest = float(ml_dtypes.finfo(dtype).min)
            masked_row = relax.op.less_equal(
                relax.op.max(bias, axis=-1, keepdims=True), _scalar(lowest, dtype)
            )
            probs = bb.normalize(relax.op.where(masked_row, _scalar(0.0, _dtype(probs)), probs))
        if mode == 3:
            qk_output = probs
        if _dtype(probs) != dtype:
            probs = relax.op.astype(probs, dtype)
        if _dtype(qk_output) != io_dtype:
            qk_output = relax.op.astype(qk_output, io_dtype)
        v = bb.normalize(v)
        if _dtype(v) != dtype:
            v = relax.op.astype(v, dtype)
        output = bb.normalize(relax.op.matmul(probs, v))
        if io_dtype != dtype:
            output = bb.normalize(relax.op.astype(output, io_dtype))
        if rank == 3:
            b, h, s, d = _shape(output)
            output = relax.op.reshape(relax.op.permute_dims(output, [0, 2, 1, 3]), (b, s, h * d))
        return relax.Tuple([output, present_k, present_v, qk_output])

    @staticmethod
    def _split_heads(x, heads: int):
        batch, length, hidden = _shape(x)
        x = relax.op.reshape(x, (batch, length, heads, hidden // heads))
        return relax.op.permute_dims(x, [0, 2, 1, 3])


class RotaryEmbedding(OnnxOpConverter):
    """ONNX ``RotaryEmbedding`` (opset 23), as ``onnx.reference.ops.op_rotary_embedding``.

    X is (batch, heads, seq, head) or (batch, seq, heads * head) with ``num_heads``; the first
    ``rotary_embedding_dim`` (default: all) features of each head rotate by the cos/sin caches,
    indexed by ``position_ids`` when given (caches (max_pos, dim/2)), else already
    (batch, seq, dim/2); halves (``interleaved=0``) or even/odd pairs (``interleaved=1``).
    """

    @classmethod
    def _impl_v23(cls, bb, inputs, attr, params):
        x, cos, sin, positions = inputs[0], inputs[1], inputs[2], _input(inputs, 3)
        shape = _shape(x)
        if len(shape) == 4:
            x = relax.op.permute_dims(x, [0, 2, 1, 3])  # (batch, seq, heads, head)
        else:
            heads = attr.get("num_heads", 0)
            if not heads:
                raise ValueError("RotaryEmbedding: 3D input needs num_heads")
            x = relax.op.reshape(x, (shape[0], shape[1], heads, shape[2] // heads))
        x = bb.normalize(x)
        batch, seq, heads, head = _shape(x)
        dim = attr.get("rotary_embedding_dim", 0) or head
        half = dim // 2
        if positions is not None:
            cos = relax.op.take(cos, positions, axis=0)
            sin = relax.op.take(sin, positions, axis=0)
        cos = bb.normalize(relax.op.expand_dims(cos, 2))  # (batch, seq, 1, dim/2)
        sin = bb.normalize(relax.op.expand_dims(sin, 2))
        rotate = relax.op.strided_slice(x, axes=[3], begin=[0], end=[dim])
        if attr.get("interleaved", 0):
            pairs = relax.op.reshape(rotate, (batch, seq, heads, half, 2))
            x1 = relax.op.squeeze(relax.op.strided_slice(pairs, [4], [0], [1]), [4])
            x2 = relax.op.squeeze(relax.op.strided_slice(pairs, [4], [1], [2]), [4])
        else:
            x1 = relax.op.strided_slice(rotate, axes=[3], begin=[0], end=[half])
            x2 = relax.op.strided_slice(rotate, axes=[3], begin=[half], end=[dim])
        real = relax.op.subtract(relax.op.multiply(cos, x1), relax.op.multiply(sin, x2))
        imag = relax.op.add(relax.op.multiply(sin, x1), relax.op.multiply(cos, x2))
        if attr.get("interleaved", 0):
            rotated = relax.op.reshape(
                relax.op.stack([real, imag], axis=4), (batch, seq, heads, dim)
            )
        else:
            rotated = relax.op.concat([real, imag], axis=3)
        if dim < head:
            rest = relax.op.strided_slice(x, axes=[3], begin=[dim], end=[head])
            rotated = relax.op.concat([rotated, rest], axis=3)
        if len(shape) == 4:
            return relax.op.permute_dims(rotated, [0, 2, 1, 3])
        return relax.op.reshape(rotated, shape)


class StaticShape(OnnxOpConverter):
    """ONNX ``Shape`` whose result is known at import time: an int64 constant tensor.

    TVM's converter returns a ``ShapeExpr``, which only a dozen converters accept ("cannot
    handle ShapeExpr inputs" elsewhere: ``Sub``, ``Mul``, ``ReduceProd`` … on shapes, as in every
    expanded function body). A constant is accepted everywhere and folds. Symbolic shapes keep
    TVM's ``ShapeExpr``.
    """

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        shape = onnx_frontend.Shape._impl_v15(bb, inputs, attr, params)
        if isinstance(shape, relax.ShapeExpr) and all(
            isinstance(d, (int, tirx.IntImm)) for d in shape.values
        ):
            values = np.array([int(d) for d in shape.values], dtype=np.int64)
            return relax.const(values, "int64")  # without the dtype, relax.const makes int32
        return shape


class ConstantAttributes(OnnxOpConverter):
    """ONNX ``Constant`` given by ``value_float(s)``/``value_int(s)`` (TVM reads ``value`` only).

    Function bodies (every ``*_expanded`` node test: Celu, Elu, HardSigmoid, windows, …) use
    them for their scalars. Other forms go to TVM's converter.
    """

    _FORMS = (
        ("value_float", "float32"),
        ("value_floats", "float32"),
        ("value_int", "int64"),
        ("value_ints", "int64"),
    )

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        for key, dtype in cls._FORMS:
            if key in attr:
                return relax.const(np.asarray(attr[key], dtype=dtype), dtype)
        return onnx_frontend.Constant._impl_v13(bb, inputs, attr, params)


class OneHot(OnnxOpConverter):
    """ONNX ``OneHot`` whose ``values`` (off, on) may be a runtime tensor; ``depth`` constant.

    ``y = where(expand_dims(indices, axis) == arange(depth), on, off)``, negative indices
    counted from ``depth`` (TVM's converter requires constant values and emits prim values).
    """

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        indices, depth, values = inputs[0], inputs[1], inputs[2]
        if not isinstance(depth, tvm.ir.GenericConst):
            raise ValueError("OneHot: depth must be a constant")
        depth = int(np.asarray(depth.value.numpy()).reshape(-1)[0])
        rank = len(_shape(indices)) + 1
        axis = attr.get("axis", -1)
        axis = axis + rank if axis < 0 else axis
        index = relax.op.astype(indices, "int64") if _dtype(indices) != "int64" else indices
        index = relax.op.where(
            relax.op.less(index, relax.const(0, "int64")),
            relax.op.add(index, relax.const(depth, "int64")),
            index,
        )
        positions = [1] * rank
        positions[axis] = depth
        classes = relax.const(np.arange(depth, dtype=np.int64).reshape(positions), "int64")
        hot = relax.op.equal(relax.op.expand_dims(index, axis), classes)
        off = relax.op.take(values, relax.const(0, "int64"), axis=0)
        on = relax.op.take(values, relax.const(1, "int64"), axis=0)
        return relax.op.where(hot, on, off)


def _normalized_axes(attr, rank: int) -> list[int]:
    axis = attr.get("axis", -1)
    axis = axis + rank if axis < 0 else axis
    return list(range(axis, rank))


class RMSNormalization(OnnxOpConverter):
    """ONNX ``RMSNormalization`` (opset 23): ``x / sqrt(mean(x², axes) + eps) * scale``.

    Axes run from ``axis`` to the last; computed in float32 (``stash_type=1``) and cast back.
    TVM's ``rms_norm`` fails to compile when the axes are all of X's (``axis=0``: "Tensor
    dimension mismatch") and refuses a ``scale`` of lower rank than the axes (broadcast); those
    get plain arithmetic, the others TVM's converter.
    """

    @classmethod
    def _impl_v23(cls, bb, inputs, attr, params):
        x, scale = inputs[0], inputs[1]
        dtype = _dtype(x)
        axes = _normalized_axes(attr, _rank(x))
        if axes[0] > 0 and _rank(scale) == len(axes):
            return onnx_frontend.RMSNormalization._impl_v23(bb, inputs, attr, params)
        compute = "float32" if attr.get("stash_type", 1) == 1 and dtype != "float64" else dtype
        xc = x if dtype == compute else relax.op.astype(x, compute)
        mean_square = relax.op.mean(relax.op.multiply(xc, xc), axis=axes, keepdims=True)
        inv_rms = relax.op.rsqrt(
            relax.op.add(mean_square, relax.const(attr.get("epsilon", 1e-5), compute))
        )
        normalized = relax.op.multiply(xc, inv_rms)
        if dtype != compute:
            normalized = relax.op.astype(normalized, dtype)
        return relax.op.multiply(normalized, scale)


class LayerNormalization(OnnxOpConverter):
    """ONNX ``LayerNormalization`` (opset 17) with its optional Mean and InvStdDev outputs.

    ``Y = (x - mean) * rsqrt(var + eps) * scale + bias`` over axes ``axis``..last, computed in
    float32 (``stash_type=1``); Mean and InvStdDev keep the reduced axes (size 1) and are
    float32. TVM's converter returns scalar zeros for them: it serves nodes with Y alone.
    """

    @classmethod
    def _impl_v17(cls, bb, inputs, attr, params):
        if attr.get("tvm_custom", {}).get("num_outputs", 1) == 1:
            return onnx_frontend.LayerNormalization._impl_v17(bb, inputs, attr, params)
        x, scale, bias = inputs[0], inputs[1], _input(inputs, 2)
        dtype = _dtype(x)
        axes = _normalized_axes(attr, _rank(x))
        compute = "float32" if attr.get("stash_type", 1) == 1 and dtype != "float64" else dtype
        xc = x if dtype == compute else relax.op.astype(x, compute)
        mean = bb.normalize(relax.op.mean(xc, axis=axes, keepdims=True))
        centered = bb.normalize(relax.op.subtract(xc, mean))
        variance = relax.op.mean(relax.op.multiply(centered, centered), axis=axes, keepdims=True)
        inv_std = bb.normalize(
            relax.op.rsqrt(relax.op.add(variance, relax.const(attr.get("epsilon", 1e-5), compute)))
        )
        normalized = relax.op.multiply(centered, inv_std)
        if dtype != compute:
            normalized = relax.op.astype(normalized, dtype)
        output = relax.op.multiply(normalized, scale)
        if bias is not None:
            output = relax.op.add(output, bias)
        return relax.Tuple([output, mean, inv_std])


# Ops evaluated at import time when all their inputs are small constants (shape arithmetic:
# Shape -> Slice/Gather -> Div/Concat -> Reshape, as function bodies and exporters write it).
# TVM's converters emit calls for most of them, and a computed shape is refused by Reshape,
# Expand, ConstantOfShape, … ("requires the input new shape to be Shape").
FOLDABLE_OPS = frozenset(
    [
        "Abs",
        "Add",
        "And",
        "Cast",
        "CastLike",
        "Ceil",
        "Concat",
        "ConstantOfShape",
        "Div",
        "Equal",
        "Expand",
        "Floor",
        "Gather",
        "Greater",
        "Identity",
        "Less",
        "Max",
        "Min",
        "Mod",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "Pow",
        "Range",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "Reshape",
        "Size",
        "Slice",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Unsqueeze",
        "Where",
    ]
)
FOLD_MAX_ELEMENTS = 4096


def _fold_constants(op_type: str, inputs, attr: dict, opset: int):
    """``op_type`` on constant ``inputs``, computed by onnx's reference; None if not foldable."""
    present = [x for x in inputs if x is not None]
    if not present or not all(isinstance(x, tvm.ir.GenericConst) for x in present):
        return None
    arrays = [None if x is None else x.value.numpy() for x in inputs]
    if sum(a.size for a in arrays if a is not None) > FOLD_MAX_ELEMENTS:
        return None
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    try:
        names = ["" if a is None else f"in{i}" for i, a in enumerate(arrays)]
        outputs = [f"out{i}" for i in range(attr.get("tvm_custom", {}).get("num_outputs", 1))]
        attrs = {k: v for k, v in attr.items() if k != "tvm_custom"}
        node = helper.make_node(op_type, names, outputs, **attrs)
        graph = helper.make_graph(
            [node],
            "fold",
            [
                helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape
                )
                for name, a in zip(names, arrays, strict=True)
                if a is not None
            ],
            [helper.make_tensor_value_info(name, 0, None) for name in outputs],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        feeds = {name: a for name, a in zip(names, arrays, strict=True) if a is not None}
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # anything the reference cannot evaluate: TVM's converter decides
        return None
    constants = [relax.const(np.asarray(r), str(np.asarray(r).dtype)) for r in results]
    return constants[0] if len(constants) == 1 else relax.Tuple(constants)


def _folding(converter: type[OnnxOpConverter], op_type: str) -> type[OnnxOpConverter]:
    """``converter``, preceded by constant folding (:func:`_fold_constants`)."""

    class Folding(converter):
        @classmethod
        def get_converter(cls, opset):
            convert = converter.get_converter(opset)

            def fold_or_convert(bb, inputs, attr, params):
                folded = _fold_constants(op_type, inputs, attr, opset)
                return folded if folded is not None else convert(bb, inputs, attr, params)

            return fold_or_convert

    return Folding


def _converters() -> dict[str, type[OnnxOpConverter]]:
    from backends.tvm.dynamic_shapes import CONVERTERS as DYNAMIC_SHAPE_CONVERTERS
    from backends.tvm.narrow_dtypes import converters as narrow_dtype_converters
    from backends.tvm.ops_extra import CONVERTERS as EXTRA_CONVERTERS
    from backends.tvm.ops_sequence import CONVERTERS as SEQUENCE_CONVERTERS
    from backends.tvm.panel_gemm import PanelGather, PanelMatMul
    from backends.tvm.quantized import PackedGather, PackedMatMul

    return {
        **DYNAMIC_SHAPE_CONVERTERS,  # symbolic dims (dynamic sequence length), see the module
        **narrow_dtype_converters(),  # float8/float4/int4/int2 casts and Q/DQ, see the module
        **EXTRA_CONVERTERS,  # standard ops TVM lacks or gets wrong (elementwise, signal, ...)
        **SEQUENCE_CONVERTERS,  # RNN/GRU/LSTM, LinearAttention, CausalConvWithState, Resize
        "SkipLayerNormalization": SkipLayerNormalization,
        "PackedMatMul": PackedMatMul,
        "PackedGather": PackedGather,
        "PanelMatMul": PanelMatMul,
        "PanelGather": PanelGather,
        "Attention": StandardAttention,
        "RotaryEmbedding": RotaryEmbedding,
        "RMSNormalization": RMSNormalization,
        "LayerNormalization": LayerNormalization,
        "Shape": StaticShape,
        "Constant": ConstantAttributes,
        "OneHot": OneHot,
    }


CONVERTERS: dict[str, type[OnnxOpConverter]] = _converters()


def converter_names() -> set[str]:
    """Op names TVM's importer handles once extended."""
    return set(onnx_frontend._get_convert_map()) | set(CONVERTERS)


@contextlib.contextmanager
def extended_converters() -> Iterator[None]:
    """TVM's importer with :data:`CONVERTERS` added, for the duration of the block."""
    original = onnx_frontend._get_convert_map

    def extended():
        table = original()
        table.update(CONVERTERS)
        for op in FOLDABLE_OPS & set(table):
            table[op] = _folding(table[op], op)
        return table

    onnx_frontend._get_convert_map = extended
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original
