"""Integer (quantized-operator) ONNX ops TVM's Relax importer lacks: QLinearMatMul, QLinearConv,
ConvInteger.

Integer arithmetic is exact, as onnx's reference computes it: inputs widened to int32 minus
their zero points, an int32 matmul or convolution (int32 accumulators), then for the QLinear
ops the requantization ``y = saturate(round_half_even(acc · (s_a · s_b / s_y)) + zp_y)``. The
multiplier is computed in the scales' dtype (as numpy does for float16 scales) and applied in
float64 (numpy promotes int32 · float to float64), so the rounding matches the reference
bit for bit.

Quantization parameters may be run-time tensors. Per-axis parameters: QLinearMatMul's ``a``/``y``
ones are per row (a 1-D tensor of M elements), ``b``'s per column; QLinearConv's and
ConvInteger's weight ones are per output channel.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from backends.tvm.ops_common import dtype_of, input_at, np_dtype, rank_of, static_shape

__all__ = ["CONVERTERS"]


def _widened(bb, x, zero_point, zero_point_shape=None):
    """``int32(x) - int32(zero_point)`` (the zero point reshaped to broadcast, when given)."""
    wide = relax.op.astype(x, "int32")
    if zero_point is None:
        return bb.normalize(wide)
    zero = bb.normalize(relax.op.astype(zero_point, "int32"))
    if zero_point_shape is not None:
        zero = relax.op.reshape(zero, zero_point_shape)
    return bb.normalize(relax.op.subtract(wide, zero))


def _per_axis(bb, value, shape: list[int]):
    """A scale or zero point: a scalar or one-element tensor as is, else reshaped to ``shape``
    (per row, per column or per channel)."""
    if value is None:
        return None
    size = int(np.prod([int(d) for d in value.ty.shape])) if rank_of(value) else 1
    return value if size == 1 else bb.normalize(relax.op.reshape(value, shape))


def _requantize(bb, accumulator, a_scale, b_scale, y_scale, y_zero_point, out_dtype: str):
    """``saturate(round(acc · (a_scale · b_scale / y_scale)) + y_zero_point)`` in ``out_dtype``."""
    scale_dtype = dtype_of(a_scale)
    if scale_dtype in ("float16", "bfloat16"):
        # Each product and quotient rounded to the scales' dtype, as numpy computes it.
        def wide(v):
            return relax.op.astype(v, "float32")

        product = relax.op.astype(relax.op.multiply(wide(a_scale), wide(b_scale)), scale_dtype)
        multiplier = relax.op.astype(relax.op.divide(wide(product), wide(y_scale)), scale_dtype)
    else:
        multiplier = relax.op.divide(relax.op.multiply(a_scale, b_scale), y_scale)
    scaled = relax.op.multiply(
        relax.op.astype(accumulator, "float64"), relax.op.astype(multiplier, "float64")
    )
    if y_zero_point is not None:
        scaled = relax.op.add(scaled, relax.op.astype(y_zero_point, "float64"))
    info = np.iinfo(np_dtype(out_dtype))
    clipped = relax.op.clip(relax.op.round(scaled), int(info.min), int(info.max))
    return relax.op.astype(clipped, out_dtype)


class QLinearMatMul(OnnxOpConverter):
    """``QLinearMatMul`` (opset 10, 21): int32 matmul of zero-point-shifted inputs, requantized."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = (
            input_at(inputs, i) for i in range(8)
        )
        rows = static_shape(a, "QLinearMatMul", attr)[-2] if rank_of(a) >= 2 else 1
        per_row = [rows, 1]
        columns = static_shape(b, "QLinearMatMul", attr)[-1]
        per_column = [columns]
        accumulator = relax.op.matmul(
            _widened(bb, a, _per_axis(bb, a_zero, per_row)),
            _widened(bb, b, _per_axis(bb, b_zero, per_column)),
        )
        out_dtype = dtype_of(y_zero) if y_zero is not None else dtype_of(a)
        return _requantize(
            bb,
            bb.normalize(accumulator),
            _per_axis(bb, a_scale, per_row),
            _per_axis(bb, b_scale, per_column),
            _per_axis(bb, y_scale, per_row),
            _per_axis(bb, y_zero, per_row),
            out_dtype,
        )


def _integer_conv(bb, x, w, attr, params):
    """TVM's ``Conv`` converter on int32 tensors (it edits ``attr``: given a copy)."""
    return bb.normalize(onnx_frontend.Conv._impl_v11(bb, [x, w, None], dict(attr), params))


def _per_channel_shape(x) -> list[int]:
    """Output channels of an N-C-spatial tensor of ``x``'s rank: ``[1, C, 1, ...]``."""
    return [1, -1] + [1] * (rank_of(x) - 2)


class ConvInteger(OnnxOpConverter):
    """``ConvInteger`` (opset 10): an int32 convolution of zero-point-shifted inputs."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x, w, x_zero, w_zero = (input_at(inputs, i) for i in range(4))
        weight_zero_shape = [-1] + [1] * (rank_of(w) - 1)
        return _integer_conv(
            bb,
            _widened(bb, x, x_zero),
            _widened(bb, w, _per_axis(bb, w_zero, weight_zero_shape)),
            attr,
            params,
        )


class QLinearConv(OnnxOpConverter):
    """``QLinearConv`` (opset 10): ``ConvInteger`` plus an int32 bias, requantized."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero, bias = (
            input_at(inputs, i) for i in range(9)
        )
        weight_zero_shape = [-1] + [1] * (rank_of(w) - 1)
        accumulator = _integer_conv(
            bb,
            _widened(bb, x, x_zero),
            _widened(bb, w, _per_axis(bb, w_zero, weight_zero_shape)),
            attr,
            params,
        )
        channel = _per_channel_shape(x)
        if bias is not None:
            bias = relax.op.reshape(bb.normalize(relax.op.astype(bias, "int32")), channel)
            accumulator = bb.normalize(relax.op.add(accumulator, bias))
        out_dtype = dtype_of(y_zero) if y_zero is not None else dtype_of(x)
        return _requantize(
            bb,
            accumulator,
            x_scale,
            _per_axis(bb, w_scale, channel),
            y_scale,
            y_zero,
            out_dtype,
        )


CONVERTERS: dict[str, type[OnnxOpConverter]] = {
    "QLinearMatMul": QLinearMatMul,
    "QLinearConv": QLinearConv,
    "ConvInteger": ConvInteger,
}
