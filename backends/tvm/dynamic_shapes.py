"""Converters that keep symbolic dimensions (a dynamic sequence length) through TVM's importer.

TVM 0.27's Relax ONNX importer tracks shape arithmetic symbolically: ``Shape`` yields a
``relax.ShapeExpr`` of ``PrimExpr`` dims, ``Gather``/``Squeeze`` of one dim yields a scalar
``PrimExpr`` (a Relax expression of ``PrimType``) and ``Add``/``Sub``/``Mul`` of those fold to
``PrimExpr`` again. Several converters handle only some of these forms. A decoder exported by
``torch.onnx.export(dynamo=True)`` with ``Dim("seq")`` (GPT-2, Llama, Qwen2, Mistral, Phi, Gemma;
``tools/zoo.py``) failed at these places, in this order:

* ``Reshape(seq + 1, [1])`` (the end of a ``Slice`` in the attention-mask code): TVM calls
  ``relax.op.reshape`` on the scalar ("Reshape expects the input data to be a Tensor. However,
  the given input is ir.PrimType"). :class:`Reshape` turns a scalar reshaped to one element into
  ``ShapeExpr([seq + 1])`` — still symbolic, which ``Slice``/``Concat``/``Expand`` consume — and
  a scalar reshaped to anything else into an int64 tensor first.
* ``Expand([1, seq] tensor, constant [1, 1])``: TVM's constant-shape branch reads every input
  dim as an integer (``'Var' object has no attribute 'value'``). :class:`Expand` hands the
  constant to TVM's ``ShapeExpr`` branch, which keeps symbolic dims.
* ``Range(0, seq, 1)`` (position ids): TVM computes the length as a run-time tensor and gives the
  result a fresh dim ``range_len_0`` unrelated to ``seq``, so ``token embeddings + position
  embeddings`` has an unknown shape and every later converter that needs a rank or a shape fails
  (or, unconsumed, the build fails: "out_ty of call_dps_packed should have defined ShapeExpr").
  :class:`Range` uses ``relax.op.arange`` on the ``PrimExpr`` bounds, which infers ``seq``.

Two more places needed a symbolic-safe touch outside this module: our ``LayerNormalization`` and
``RMSNormalization`` converters (:mod:`backends.tvm.converters`) asked for a static shape where
only the rank matters, and ``PackedMatMul`` (:mod:`backends.tvm.quantized`) chose its kernel from
a static row count (with ``seq`` rows it now dequantizes once and multiplies; the GEMV kernel
serves static decode steps).

Each class subclasses TVM's converter, handles the symbolic case, and defers to TVM otherwise.
They are registered in :data:`backends.tvm.converters.CONVERTERS` through :data:`CONVERTERS`.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend as tvm_onnx

__all__ = ["CONVERTERS"]


def _is_prim_value(value) -> bool:
    """A symbolic scalar: in TVM 0.27 a ``PrimExpr`` is itself a Relax expression."""
    return tvm.ir.is_prim_expr(value)


def _constant_list(value, params) -> list[int] | None:
    value = tvm_onnx.get_constant(value, params)
    if isinstance(value, tvm.ir.GenericConst):
        return [int(v) for v in np.asarray(value.value.numpy()).reshape(-1)]
    return None


def _scalar_tensor(bb: relax.BlockBuilder, value: relax.Expr) -> relax.Expr:
    """A 0-d int64 tensor holding the symbolic scalar ``value``, computed at run time."""
    if str(value.ty.dtype) != "int64":
        value = tvm.tirx.Cast("int64", value)
    tensor = bb.normalize(relax.op.shape_to_tensor(relax.ShapeExpr([value])))
    return bb.normalize(relax.op.reshape(tensor, ()))


class Reshape(tvm_onnx.Reshape):
    """Reshape of a symbolic scalar: to one element stays a ShapeExpr, else an int64 tensor."""

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        data = inputs[0]
        if _is_prim_value(data):
            target = _constant_list(inputs[1], params)
            if target is not None and len(target) == 1 and target[0] in (1, -1):
                return relax.ShapeExpr([data])
            inputs = [_scalar_tensor(bb, data), *list(inputs)[1:]]
        return super()._impl_v13(bb, inputs, attr, params)


def _has_symbolic_dims(value) -> bool:
    ty = getattr(value, "ty", None)
    shape = getattr(ty, "shape", None)
    if not isinstance(shape, relax.ShapeExpr):
        return False
    return any(not isinstance(d, tvm.tirx.IntImm) for d in shape.values)


class Expand(tvm_onnx.Expand):
    """Expand of a tensor with symbolic dims to a constant shape.

    TVM's constant-shape branch reads every input dim as an integer. A constant target shape is
    handed to its ``ShapeExpr`` branch instead (which keeps symbolic dims), after padding it to
    the input's rank with ones (broadcasting aligns from the right).
    """

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        data = inputs[0]
        target = _constant_list(inputs[1], params)
        if target is not None and _has_symbolic_dims(data):
            rank = len(data.ty.shape.values)
            target = [1] * (rank - len(target)) + target
            shape = relax.ShapeExpr([tvm.tirx.IntImm("int64", d) for d in target])
            inputs = [data, shape]
        return super()._impl_v13(bb, inputs, attr, params)


def _int_scalar(value, params):
    """An integer scalar as a ``PrimExpr`` (constant or symbolic), or None if it is neither."""
    value = tvm_onnx.get_constant(value, params)
    if _is_prim_value(value):
        dtype = str(value.ty.dtype)
        if not dtype.startswith(("int", "uint")):
            return None
        return value if dtype == "int64" else tvm.tirx.Cast("int64", value)
    if isinstance(value, tvm.ir.GenericConst):
        array = np.asarray(value.value.numpy())
        if array.size == 1 and np.issubdtype(array.dtype, np.integer):
            return tvm.tirx.IntImm("int64", int(array.reshape(())))
    return None


class Range(tvm_onnx.Range):
    """Range over symbolic integer bounds, e.g. ``Range(0, seq, 1)`` for position ids.

    TVM's converter computes the length as a run-time tensor and gives the result a fresh
    symbolic dim (``range_len_0``) that nothing relates to ``seq``: adding the position
    embeddings to the token embeddings then has an unknown shape, which later converters
    refuse. ``relax.op.arange`` on the ``PrimExpr`` bounds infers the length ``seq`` itself.

    Handled: integer bounds, one of them symbolic, a constant positive ``delta``; the length is
    ``ceil((limit - start) / delta)``, so ``limit >= start`` at run time (a length or an offset
    past it, as exporters emit). Anything else goes to TVM's converter.
    """

    @classmethod
    def _impl_v12(cls, bb, inputs, attr, params):
        bounds = [_int_scalar(v, params) for v in list(inputs)[:3]]
        symbolic = any(b is not None and not isinstance(b, tvm.tirx.IntImm) for b in bounds)
        delta = bounds[2]
        if symbolic and all(b is not None for b in bounds) and isinstance(delta, tvm.tirx.IntImm):
            start = tvm_onnx.get_constant(inputs[0], params)
            dtype = str(start.ty.dtype)
            if delta.value > 0:
                return relax.op.arange(bounds[0], bounds[1], delta, dtype)
        return super()._impl_v12(bb, inputs, attr, params)


CONVERTERS: dict[str, type[tvm_onnx.OnnxOpConverter]] = {
    "Reshape": Reshape,
    "Expand": Expand,
    "Range": Range,
}
