"""Narrow dtypes in the TVM backend: float8, float8e8m0, float4e2m1, int4/uint4, int2/uint2.

TVM cannot compute with these on CPU (no float8 conversions in its LLVM code, sub-byte tensors
cannot be materialized). Inside the compiled module a narrow tensor is therefore held in a
*storage* dtype of one byte per element (:mod:`compiler.narrow_storage`: a float's bit pattern as
``uint8``, an integer's value as ``int8``/``uint8``), and :func:`lower_narrow_dtypes` rewrites the
model before import:

* every narrow value (graph inputs and outputs, initializers, ``Constant`` tensors, node outputs)
  is retyped to its storage dtype;
* ``Cast``/``CastLike`` from or to a narrow dtype become ``compiler.tvm::NarrowCast``, and
  ``QuantizeLinear``/``DequantizeLinear`` on a narrow dtype or with ``block_size`` become
  ``compiler.tvm::NarrowQuantizeLinear``/``NarrowDequantizeLinear``
  (:mod:`backends.tvm.ops_quantize_linear`), each carrying the ONNX dtypes as attributes;
* the ops that only move or select elements (:data:`DATA_MOVEMENT_OPS`) work on storage bytes
  unchanged; any other op on a narrow dtype is refused with a :class:`BackendError`.

The arithmetic, exact and elementwise (TE, integer operations on the source's bits; no float
comparisons, so NaN/Inf handling does not depend on fast-math flags):

* decode a narrow float: a table of its 2**bits values as float32 (from ml_dtypes), indexed by
  the code; every such value is exact in float32, so widening further is exact too;
* encode to a narrow float from float32/float64 bits (float16/bfloat16 are widened to float32
  first, exactly): round to nearest, ties to even, on the magnitude's bits (a normal result
  shifts the mantissa by ``m_src - m``; a subnormal one shifts the significand by the extra
  exponent distance), then a code above the largest finite one is the largest finite one when
  ``saturate`` (as ``onnx.numpy_helper.saturate_cast``: clip, then cast), else Inf (e5m2) or NaN
  (e4m3fn, the fnuz kinds); NaN is NaN; fnuz kinds have no -0; float4e2m1 has no Inf/NaN and
  saturates always, NaN giving -0 and -NaN +0 (as ml_dtypes does);
* encode to float8e8m0: ``onnx.numpy_helper.to_float8e8m0`` on float32 bits (the exponent, the
  sign dropped, rounded ``up``/``down``/``nearest``; saturation keeps 0xFE);
* encode to int4/int2/uint4/uint2 (``Cast``): a float is truncated toward zero (0 when
  ``|x| >= 2**31`` or not finite, as ml_dtypes' C conversion gives), and the value wraps modulo
  ``2**bits`` (two's complement for the signed kinds), as ml_dtypes' ``astype``.
"""

from __future__ import annotations

import dataclasses
from functools import cache

import ml_dtypes
import numpy as np
import onnx_ir as ir
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from compiler.errors import BackendError
from compiler.narrow_storage import STORAGE_DTYPES, to_storage

__all__ = [
    "DATA_MOVEMENT_OPS",
    "NARROW_DTYPES",
    "NarrowCast",
    "cast",
    "converters",
    "lower_narrow_dtypes",
    "needs_narrow_lowering",
    "storage_dtype",
]

DOMAIN = "compiler.tvm"
_FLOATS = (
    ir.DataType.FLOAT8E4M3FN,
    ir.DataType.FLOAT8E4M3FNUZ,
    ir.DataType.FLOAT8E5M2,
    ir.DataType.FLOAT8E5M2FNUZ,
    ir.DataType.FLOAT4E2M1,
)
_INT_BITS = {
    ir.DataType.INT4: (4, True),
    ir.DataType.UINT4: (4, False),
    ir.DataType.INT2: (2, True),
    ir.DataType.UINT2: (2, False),
}
NARROW_DTYPES = frozenset((*_FLOATS, ir.DataType.FLOAT8E8M0, *_INT_BITS))

# Ops that only move, reshape or select elements: correct on storage bytes.
DATA_MOVEMENT_OPS = frozenset(
    [
        "Identity",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
        "Concat",
        "Split",
        "Slice",
        "Gather",
        "GatherElements",
        "GatherND",
        "ScatterElements",
        "ScatterND",
        "Expand",
        "Tile",
        "Pad",
        "Where",
        "Shape",
        "Size",
        "Constant",
        "ConstantOfShape",
        "DepthToSpace",
        "SpaceToDepth",
        "Compress",
        "ReverseSequence",
        "Optional",
        "OptionalGetElement",
    ]
)


def _numpy_dtype(dtype: ir.DataType) -> np.dtype:
    return np.dtype(dtype.numpy())


def storage_dtype(dtype: ir.DataType) -> ir.DataType:
    """The dtype a ``dtype`` tensor has inside the module (itself when not narrow)."""
    if dtype not in NARROW_DTYPES:
        return dtype
    return ir.DataType.from_numpy(np.dtype(STORAGE_DTYPES[str(_numpy_dtype(dtype))]))


def _tvm_dtype(dtype: ir.DataType) -> str:
    """TVM's name for a dtype the module computes with (storage for narrow ones)."""
    return str(_numpy_dtype(storage_dtype(dtype)))


# ---------------------------------------------------------------------------------------------
# Formats


@dataclasses.dataclass(frozen=True)
class FloatFormat:
    """A narrow float format: its width, mantissa bits, smallest normal exponent, special codes.

    ``max_code`` is a magnitude (sign bit clear); ``nan_code``/``overflow_code`` are the codes a
    positive NaN / a non-saturated positive overflow give: the sign bit is flipped for negative
    inputs, except in the fnuz kinds, whose single NaN 0x80 takes the place of -0.
    """

    bits: int  # total, sign included
    mantissa: int
    min_exponent: int  # unbiased exponent of the smallest normal value
    max_code: int  # the largest finite value
    nan_code: int
    overflow_code: int | None  # None: overflow always saturates (float4e2m1)
    fnuz: bool  # no -0, and unsigned NaN/overflow codes


@cache
def float_format(dtype: ir.DataType) -> FloatFormat:
    """The format of a narrow float ``dtype`` (from ml_dtypes' ``finfo`` and its NaN/Inf rules)."""
    np_dtype = _numpy_dtype(dtype)
    info = ml_dtypes.finfo(np_dtype)
    max_code = int(np.array(info.max, np_dtype).view(np.uint8))
    fnuz = dtype in (ir.DataType.FLOAT8E4M3FNUZ, ir.DataType.FLOAT8E5M2FNUZ)
    if dtype == ir.DataType.FLOAT4E2M1:
        nan, overflow = 0x8, None  # ml_dtypes: NaN -> -0, -NaN -> +0
    elif fnuz:
        nan, overflow = 0x80, 0x80
    elif dtype == ir.DataType.FLOAT8E5M2:
        nan, overflow = 0x7E, 0x7C  # Inf
    else:  # e4m3fn: S.1111.111 is NaN, no Inf
        nan, overflow = 0x7F, 0x7F
    return FloatFormat(
        bits=4 if dtype == ir.DataType.FLOAT4E2M1 else 8,
        mantissa=int(info.nmant),
        min_exponent=int(info.minexp),
        max_code=max_code,
        nan_code=nan,
        overflow_code=overflow,
        fnuz=fnuz,
    )


@cache
def decode_table(dtype: ir.DataType) -> np.ndarray:
    """Every code of a narrow float ``dtype`` as float32 (exact), indexed by the code."""
    size = 1 << (4 if dtype == ir.DataType.FLOAT4E2M1 else 8)
    return np.arange(size, dtype=np.uint8).view(_numpy_dtype(dtype)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Elementwise TIR expressions


def _u(value: int, dtype: str):
    return tirx.const(value, dtype)


def _prim_dtype(x) -> str:
    return str(x.ty)  # TVM 0.27: a PrimExpr's dtype


def _source_bits(x) -> tuple:
    """``x``'s bits as an unsigned integer, with (width, exponent bits, mantissa bits)."""
    if _prim_dtype(x) in ("float16", "bfloat16"):
        x = x.astype("float32")  # exact
    if _prim_dtype(x) == "float64":
        return tirx.reinterpret("uint64", x), 64, 11, 52
    if _prim_dtype(x) != "float32":
        raise ValueError(f"cannot encode {_prim_dtype(x)} as a narrow float")
    return tirx.reinterpret("uint32", x), 32, 8, 23


def _round_shift(value, shift, dtype: str):
    """``value >> shift`` rounded to nearest, ties to even (``1 <= shift < width``)."""
    one = _u(1, dtype)
    quotient = value >> shift
    remainder = value & ((one << shift) - one)
    half = one << (shift - one)
    up = tirx.Or(remainder > half, tirx.And(remainder == half, (quotient & one) == one))
    return quotient + tirx.Select(up, one, _u(0, dtype))


def encode_float(x, dtype: ir.DataType, saturate: bool):
    """The ``uint8`` code of float ``x`` in narrow float ``dtype`` (see the module doc)."""
    fmt = float_format(dtype)
    bits, width, exp_bits, man_bits = _source_bits(x)
    udt = f"uint{width}"
    src_bias = (1 << (exp_bits - 1)) - 1
    sign = (bits >> _u(width - 1, udt)) == _u(1, udt)
    magnitude = bits & _u((1 << (width - 1)) - 1, udt)
    infinity = ((1 << exp_bits) - 1) << man_bits
    exponent_field = magnitude >> _u(man_bits, udt)
    # A normal result: drop ``man_bits - m`` mantissa bits (a carry moves into the exponent),
    # then re-bias the exponent.
    min_field = src_bias + fmt.min_exponent  # source exponent field of the smallest normal
    rebias = (src_bias - (1 - fmt.min_exponent)) << fmt.mantissa
    normal = _round_shift(magnitude, _u(man_bits - fmt.mantissa, udt), udt) - _u(rebias, udt)
    # A subnormal result: the significand (implicit bit set when the source is normal) in units
    # of the smallest subnormal, 2**(min_exponent - m): shift by the extra exponent distance.
    significand = (magnitude & _u((1 << man_bits) - 1, udt)) | tirx.Select(
        exponent_field > _u(0, udt), _u(1 << man_bits, udt), _u(0, udt)
    )
    distance = tirx.Select(
        exponent_field < _u(min_field, udt), _u(min_field, udt) - exponent_field, _u(0, udt)
    )
    shift = tirx.min(_u(man_bits - fmt.mantissa, udt) + distance, _u(width - 1, udt))
    subnormal = _round_shift(significand, shift, udt)
    code = tirx.Select(exponent_field >= _u(min_field, udt), normal, subnormal)
    overflow = code > _u(fmt.max_code, udt)
    sign_bit = tirx.Select(sign, _u(1 << (fmt.bits - 1), "uint8"), _u(0, "uint8"))
    if fmt.fnuz:  # 0x80 is NaN: -0 is +0, and the special codes carry no sign
        sign_bit = tirx.Select(code == _u(0, udt), _u(0, "uint8"), sign_bit)
    special_sign = _u(0, "uint8") if fmt.fnuz else sign_bit
    result = code.astype("uint8") | sign_bit
    if saturate or fmt.overflow_code is None:
        clipped = _u(fmt.max_code, "uint8") | sign_bit
    else:
        clipped = _u(fmt.overflow_code, "uint8") ^ special_sign
    result = tirx.Select(overflow, clipped, result)
    nan = _u(fmt.nan_code, "uint8") ^ special_sign
    return tirx.Select(magnitude > _u(infinity, udt), nan, result)


def encode_e8m0(x, saturate: bool, round_mode: str):
    """The float8e8m0 code of ``x`` (through float32), as ``onnx.numpy_helper.to_float8e8m0``."""
    if _prim_dtype(x) != "float32":
        x = x.astype("float32")
    bits = tirx.reinterpret("uint32", x)
    exponent = (bits >> _u(23, "uint32")) & _u(0xFF, "uint32")

    def bit(mask: int):
        return (bits & _u(mask, "uint32")) != _u(0, "uint32")

    if round_mode == "nearest":
        up = tirx.And(
            bit(0x400000),
            tirx.Or(tirx.Or(bit(0x200000), bit(0x1FFFFF)), exponent > _u(0, "uint32")),
        )
    elif round_mode == "up":
        up = bit(0x7FFFFF)
    elif round_mode == "down":
        up = tirx.const(False, "bool")
    else:
        raise ValueError(f"unknown round_mode {round_mode!r} (up, down, nearest)")
    if saturate:
        up = tirx.And(up, exponent != _u(0xFE, "uint32"))
    rounded = exponent + tirx.Select(up, _u(1, "uint32"), _u(0, "uint32"))
    special = exponent == _u(0xFF, "uint32")
    return tirx.Select(special, _u(0xFF, "uint32"), rounded).astype("uint8")


def encode_int(x, dtype: ir.DataType):
    """``x`` as narrow integer ``dtype``'s storage value: truncated, wrapped (module doc)."""
    bits, signed = _INT_BITS[dtype]
    source = _prim_dtype(x)
    if source == "bool":
        x = x.astype("int32")
    elif source.startswith(("float", "bfloat")):
        raw, width, exp_bits, man_bits = _source_bits(x)
        udt = f"uint{width}"
        exponent_field = (raw >> _u(man_bits, udt)) & _u((1 << exp_bits) - 1, udt)
        in_range = exponent_field < _u((1 << (exp_bits - 1)) - 1 + 31, udt)  # |x| < 2**31
        widened = x.astype("float32") if width == 32 else x
        zero = tirx.const(0, _prim_dtype(widened))
        x = tirx.Select(in_range, widened, zero).astype("int32")
    low = x & tirx.const((1 << bits) - 1, _prim_dtype(x))  # two's complement: the low bits
    if not signed:
        return low.astype("uint8")
    low = low.astype("int8")
    wrapped = low - tirx.const(1 << bits, "int8")
    return tirx.Select(low >= tirx.const(1 << (bits - 1), "int8"), wrapped, low)


# ---------------------------------------------------------------------------------------------
# Relax: casts between any dtype and the narrow ones


def _elementwise(bb, x, expression, name: str):
    def compute(tensor):
        return te.compute(tensor.shape, lambda *i: expression(tensor(*i)), name=name)

    return bb.emit_te(compute, bb.normalize(x), primfunc_name_hint=name)


def _astype(x, dtype: str):
    return x if str(x.ty.dtype) == dtype else relax.op.astype(x, dtype)


def _decode(bb, x, dtype: ir.DataType):
    """A narrow ``dtype`` tensor (storage) as a tensor TVM computes with: float32 for floats,
    the storage value for integers."""
    if dtype in _INT_BITS:
        return x
    table = relax.const(decode_table(dtype), "float32")
    return bb.normalize(relax.op.take(table, _astype(x, "int32"), axis=0))


def cast(
    bb,
    x,
    source: ir.DataType,
    target: ir.DataType,
    *,
    saturate: bool = True,
    round_mode: str = "up",
):
    """``Cast(x, to=target)`` where ``x`` (a ``source`` tensor, in storage when narrow) and the
    result may be narrow; the result is in ``target``'s storage dtype."""
    if source in NARROW_DTYPES:
        x = _decode(bb, x, source)
    if target not in NARROW_DTYPES:
        return _astype(x, _tvm_dtype(target))
    dtype = str(x.ty.dtype)
    if target in _INT_BITS:
        return _elementwise(bb, x, lambda v: encode_int(v, target), f"to_{target.name.lower()}")
    if target == ir.DataType.FLOAT8E8M0:
        return _elementwise(bb, x, lambda v: encode_e8m0(v, saturate, round_mode), "to_float8e8m0")
    if not dtype.startswith(("float", "bfloat")):
        # Integers (and bool) through float64: exact for 32-bit ones, one rounding for 64-bit.
        x = _astype(x, "float64" if dtype in ("int32", "uint32", "int64", "uint64") else "float32")
    return _elementwise(
        bb, x, lambda v: encode_float(v, target, saturate), f"to_{target.name.lower()}"
    )


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NarrowCast(OnnxOpConverter):
    """``compiler.tvm::NarrowCast(x) {from, to, saturate, round_mode}``: ``Cast`` where either
    dtype is narrow, on storage tensors (:func:`cast`)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        return cast(
            bb,
            inputs[0],
            ir.DataType(attr["from"]),
            ir.DataType(attr["to"]),
            saturate=bool(attr.get("saturate", 1)),
            round_mode=_text(attr.get("round_mode", "up")),
        )


# ---------------------------------------------------------------------------------------------
# The rewrite before import


def _dtype_of(value: ir.Value | None) -> ir.DataType | None:
    return None if value is None else value.dtype


def _where(node: ir.Node) -> str:
    return f"node {node.name!r} ({node.op_type})"


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _cast_node(node: ir.Node) -> ir.Node | None:
    """``NarrowCast`` for a ``Cast``/``CastLike`` from or to a narrow dtype, else None."""
    source = _dtype_of(node.inputs[0])
    if node.op_type == "Cast":
        target = ir.DataType(_int_attr(node, "to", 0))
    else:
        target = _dtype_of(node.inputs[1])
    if source not in NARROW_DTYPES and target not in NARROW_DTYPES:
        return None
    if source is None or target is None:
        raise BackendError(f"{_where(node)}: the input and target dtypes must be known")
    round_mode = node.attributes.get("round_mode")
    return ir.node(
        "NarrowCast",
        [node.inputs[0]],
        attributes={
            "from": int(source),
            "to": int(target),
            "saturate": _int_attr(node, "saturate", 1),
            "round_mode": round_mode.as_string() if round_mode is not None else "up",
        },
        domain=DOMAIN,
        name=node.name,
    )


def _quantize_node(node: ir.Node) -> ir.Node | None:
    """``NarrowQuantizeLinear`` for a QuantizeLinear to a narrow dtype or with blocks."""
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    target = _dtype_of(zero) if zero is not None else None
    if target is None:
        target = ir.DataType(_int_attr(node, "output_dtype", 0) or int(ir.DataType.UINT8))
    block = _int_attr(node, "block_size", 0)
    if target not in NARROW_DTYPES and not block:
        return None
    x_dtype, scale_dtype = _dtype_of(node.inputs[0]), _dtype_of(node.inputs[1])
    if x_dtype is None or scale_dtype is None:
        raise BackendError(f"{_where(node)}: the dtypes of x and y_scale must be known")
    return ir.node(
        "NarrowQuantizeLinear",
        list(node.inputs),
        attributes={
            "to": int(target),
            "axis": _int_attr(node, "axis", 1),
            "block_size": block,
            "saturate": _int_attr(node, "saturate", 1),
            "precision": _int_attr(node, "precision", 0),
        },
        domain=DOMAIN,
        name=node.name,
    )


def _dequantize_node(node: ir.Node) -> ir.Node | None:
    """``NarrowDequantizeLinear`` for a DequantizeLinear from a narrow dtype or with blocks."""
    source = _dtype_of(node.inputs[0])
    block = _int_attr(node, "block_size", 0)
    if source not in NARROW_DTYPES and not block:
        return None
    scale_dtype = _dtype_of(node.inputs[1])
    if source is None or scale_dtype is None:
        raise BackendError(f"{_where(node)}: the dtypes of x and x_scale must be known")
    target = _int_attr(node, "output_dtype", 0) or int(scale_dtype)
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    return ir.node(
        "NarrowDequantizeLinear",
        list(node.inputs),
        attributes={
            "from": int(source),
            "zero_point_from": int(_dtype_of(zero) or source) if zero is not None else 0,
            "to": target,
            "axis": _int_attr(node, "axis", 1),
            "block_size": block,
        },
        domain=DOMAIN,
        name=node.name,
    )


_REWRITES = {
    "Cast": _cast_node,
    "CastLike": _cast_node,
    "QuantizeLinear": _quantize_node,
    "DequantizeLinear": _dequantize_node,
}


def _storage_tensor(tensor: ir.TensorProtocol, name: str | None = None) -> ir.Tensor:
    return ir.Tensor(to_storage(tensor.numpy()), name=name or tensor.name)


def _graphs(model: ir.Model):
    yield model.graph
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield attr.as_graph()
            elif attr.type == ir.AttributeType.GRAPHS:
                yield from attr.as_graphs()


def _is_narrow(value: ir.Value | None) -> bool:
    return value is not None and value.dtype in NARROW_DTYPES


def _involves_narrow(node: ir.Node) -> bool:
    """Whether ``node`` reads or makes a narrow dtype, or is a blocked (de)quantization."""
    if any(_is_narrow(v) for v in (*node.inputs, *node.outputs)):
        return True
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "Cast":
        return ir.DataType(_int_attr(node, "to", 0)) in NARROW_DTYPES
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        output = _int_attr(node, "output_dtype", 0)
        return bool(_int_attr(node, "block_size", 0)) or ir.DataType(output) in NARROW_DTYPES
    value = node.attributes.get("value")
    return value is not None and (
        value.type == ir.AttributeType.TENSOR and value.as_tensor().dtype in NARROW_DTYPES
    )


def needs_narrow_lowering(model: ir.Model) -> bool:
    """Whether ``model`` has narrow dtypes or blocked (de)quantization to lower."""
    for graph in _graphs(model):
        values = [*graph.inputs, *graph.outputs, *graph.initializers.values()]
        if any(_is_narrow(v) for v in values) or any(_involves_narrow(n) for n in graph):
            return True
    return False


def lower_narrow_dtypes(model: ir.Model) -> bool:
    """Rewrites ``model`` in place for narrow dtypes (see the module doc); True if it changed.

    Raises :class:`BackendError` naming a node that computes with a narrow dtype otherwise than
    by a cast, a (de)quantization or data movement, or whose dtypes are unknown.
    """
    if not needs_narrow_lowering(model):
        return False
    graphs = list(_graphs(model))
    for graph in graphs:
        for node in list(graph):
            if node.domain not in ("", "ai.onnx"):
                continue
            rewrite = _REWRITES.get(node.op_type)
            new = rewrite(node) if rewrite is not None else None
            if new is not None:
                ir.convenience.replace_nodes_and_values(
                    graph, node, [node], [new], node.outputs, new.outputs
                )
                continue
            if _involves_narrow(node) and node.op_type not in DATA_MOVEMENT_OPS:
                raise BackendError(
                    f"{_where(node)}: the TVM backend computes with narrow dtypes (float8, "
                    "float4, int4, int2) only in Cast, CastLike, QuantizeLinear, "
                    "DequantizeLinear and data movement ops"
                )
    for graph in graphs:
        values = [*graph.inputs, *graph.initializers.values()]
        for node in graph:
            values.extend(v for v in node.outputs if v is not None)
            value_attr = node.attributes.get("value")
            if (
                value_attr is not None
                and value_attr.type == ir.AttributeType.TENSOR
                and value_attr.as_tensor().dtype in NARROW_DTYPES
            ):
                node.attributes["value"] = ir.AttrTensor(
                    "value", _storage_tensor(value_attr.as_tensor())
                )
        for value in values:
            if value.dtype in NARROW_DTYPES:
                if value.const_value is not None:
                    value.const_value = _storage_tensor(value.const_value, value.name)
                value.dtype = storage_dtype(value.dtype)
    model.opset_imports.setdefault(DOMAIN, 1)
    return True


def converters() -> dict[str, type[OnnxOpConverter]]:
    """The importer's converters for the ops :func:`lower_narrow_dtypes` emits."""
    from backends.tvm.ops_quantize_linear import NarrowDequantizeLinear, NarrowQuantizeLinear

    return {
        "NarrowCast": NarrowCast,
        "NarrowQuantizeLinear": NarrowQuantizeLinear,
        "NarrowDequantizeLinear": NarrowDequantizeLinear,
    }
