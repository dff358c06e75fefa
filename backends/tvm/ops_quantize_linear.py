"""QuantizeLinear / DequantizeLinear that TVM's importer refuses: narrow dtypes and blocks.

:func:`backends.tvm.narrow_dtypes.lower_narrow_dtypes` turns a ``QuantizeLinear`` to a narrow
dtype (float8, float4e2m1, int4/uint4, int2/uint2) or with ``block_size``, and a
``DequantizeLinear`` from one (or with ``block_size``), into ``compiler.tvm::NarrowQuantizeLinear``
/ ``NarrowDequantizeLinear``, which carry the ONNX dtypes as attributes (the tensors themselves
are in storage dtypes, :mod:`compiler.narrow_storage`). The math, as
``onnx.reference.ops.op_quantize_linear`` / ``op_dequantize_linear``:

* scale and zero point broadcast to ``x``: a scalar (or one element) as is; a vector along
  ``axis``; with ``block_size`` B each element repeated B times along ``axis`` and the last block
  cut to ``x``'s length (blocked quantization);
* quantize: ``q = x / scale`` in numpy's promoted dtype of ``x`` and ``scale`` (or
  ``precision``); integers: ``clip(round_half_even(q) + zero_point, lo, hi)``; float8:
  ``q`` cast with ``saturate`` (zero point ignored, it must be 0); float4e2m1:
  ``q + zero_point`` cast (always saturating);
* dequantize: ``(float32(x) - zero_point) * scale`` (float8/float4 ignore the zero point), in
  float32 (float64 for a float64 scale), cast to ``output_dtype`` or ``scale``'s dtype.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir
from tvm import relax, tirx
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from backends.tvm.narrow_dtypes import cast

__all__ = ["NarrowDequantizeLinear", "NarrowQuantizeLinear", "broadcast_to_input"]

_INT_RANGES = {
    dtype: (int(ml_dtypes.iinfo(dtype.numpy()).min), int(ml_dtypes.iinfo(dtype.numpy()).max))
    for dtype in (
        ir.DataType.UINT8,
        ir.DataType.INT8,
        ir.DataType.UINT16,
        ir.DataType.INT16,
        ir.DataType.UINT4,
        ir.DataType.INT4,
        ir.DataType.UINT2,
        ir.DataType.INT2,
    )
}
_FLOAT8 = (
    ir.DataType.FLOAT8E4M3FN,
    ir.DataType.FLOAT8E4M3FNUZ,
    ir.DataType.FLOAT8E5M2,
    ir.DataType.FLOAT8E5M2FNUZ,
)


def _static_shape(expr, what: str) -> list[int]:
    shape = expr.ty.shape
    if shape is None or not all(isinstance(d, (int, tirx.IntImm)) for d in shape):
        raise ValueError(f"{what} needs a static shape, got {shape}")
    return [int(d) for d in shape]


def broadcast_to_input(bb, value, x, axis: int, block_size: int):
    """``value`` (a scale or zero point) shaped to broadcast against ``x`` (module doc)."""
    value = bb.normalize(value)
    shape = _static_shape(value, "the scale/zero point")
    rank = int(x.ty.ndim)
    axis = axis + rank if axis < 0 else axis
    if not shape or int(np.prod(shape)) == 1:
        return relax.op.reshape(value, ()) if shape else value
    if not block_size:
        if len(shape) != 1:
            raise ValueError(f"a per-axis scale must be 1-D, got shape {shape}")
        dims = [1] * rank
        dims[axis] = shape[0]
        return relax.op.reshape(value, dims)
    length = _static_shape(x, "blocked quantization")[axis]
    repeated = bb.normalize(relax.op.repeat(value, block_size, axis=axis))
    if shape[axis] * block_size != length:
        repeated = relax.op.strided_slice(repeated, axes=[axis], begin=[0], end=[length])
    return repeated


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _astype(x, dtype: str):
    return x if _dtype(x) == dtype else relax.op.astype(x, dtype)


def _promoted(*dtypes: str) -> str:
    """numpy's result dtype of a division/product of these (bfloat16 and float16: float32)."""
    names = set(dtypes)
    if "bfloat16" in names and names != {"bfloat16"}:
        names = {"float32" if n in ("bfloat16", "float16") else n for n in names}
    return str(np.result_type(*(np.dtype(getattr(ml_dtypes, n, n)) for n in names)))


def _optional(inputs, index: int):
    return inputs[index] if len(inputs) > index else None


class NarrowQuantizeLinear(OnnxOpConverter):
    """``compiler.tvm::NarrowQuantizeLinear(x, scale[, zero_point]) {to, axis, block_size,
    saturate, precision}`` -> the result in ``to``'s storage dtype."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, scale, zero = inputs[0], inputs[1], _optional(inputs, 2)
        target = ir.DataType(attr["to"])
        axis, block = int(attr.get("axis", 1)), int(attr.get("block_size", 0))
        precision = int(attr.get("precision", 0))
        compute = (
            str(np.dtype(ir.DataType(precision).numpy()))
            if precision
            else _promoted(_dtype(x), _dtype(scale))
        )
        scale = broadcast_to_input(bb, _astype(scale, compute), x, axis, block)
        q = bb.normalize(relax.op.divide(_astype(x, compute), scale))
        if target in _INT_RANGES:
            low, high = _INT_RANGES[target]
            q = relax.op.round(q)  # half to even
            if zero is not None:
                zero = cast(bb, zero, target, ir.DataType.from_numpy(np.dtype(compute)))
                q = relax.op.add(q, broadcast_to_input(bb, zero, x, axis, block))
            q = bb.normalize(relax.op.clip(q, low, high))
            return cast(bb, q, ir.DataType.from_numpy(np.dtype(compute)), target)
        source = ir.DataType.from_numpy(np.dtype(compute))
        saturate = bool(attr.get("saturate", 1))
        if target in _FLOAT8:
            return cast(bb, q, source, target, saturate=saturate)
        if target == ir.DataType.FLOAT4E2M1:
            if zero is not None:
                zero = cast(bb, zero, target, source)
                q = bb.normalize(relax.op.add(q, broadcast_to_input(bb, zero, x, axis, block)))
            return cast(bb, q, source, target)
        raise ValueError(f"QuantizeLinear to {target.name} is not supported")


class NarrowDequantizeLinear(OnnxOpConverter):
    """``compiler.tvm::NarrowDequantizeLinear(x, scale[, zero_point]) {from, zero_point_from,
    to, axis, block_size}`` -> the result as ``to``."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, scale, zero = inputs[0], inputs[1], _optional(inputs, 2)
        source, target = ir.DataType(attr["from"]), ir.DataType(attr["to"])
        axis, block = int(attr.get("axis", 1)), int(attr.get("block_size", 0))
        compute = "float64" if _dtype(scale) == "float64" else "float32"
        compute_dtype = ir.DataType.from_numpy(np.dtype(compute))
        dx = cast(bb, x, source, compute_dtype)
        floating = source in _FLOAT8 or source == ir.DataType.FLOAT4E2M1
        if zero is not None and not floating:
            zero_source = ir.DataType(attr.get("zero_point_from") or attr["from"])
            zero = cast(bb, zero, zero_source, compute_dtype)
            dx = relax.op.subtract(dx, broadcast_to_input(bb, zero, x, axis, block))
        scale = broadcast_to_input(bb, _astype(scale, compute), x, axis, block)
        y = bb.normalize(relax.op.multiply(dx, scale))
        return cast(bb, y, compute_dtype, target)
