"""Helpers shared by the converters of :mod:`backends.tvm.ops_extra` and its topic modules.

A converter receives Relax expressions (graph inputs are ``relax.Var``; initializers small enough
to be inlined, and everything folded at import time, are ``relax.Constant``) and an ``attr``
dict whose ``tvm_custom`` entry holds the node's name and its number of outputs. These helpers
read static shapes, constant inputs and attributes, and raise :class:`BackendError` naming the
node and its op when a precondition does not hold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.frontend.onnx import onnx_frontend

from compiler.errors import BackendError

__all__ = [
    "ConversionError",
    "constant",
    "constant_op",
    "downcast",
    "dtype_of",
    "evaluate_reference",
    "fail",
    "input_at",
    "is_constant",
    "is_float",
    "np_dtype",
    "num_outputs",
    "rank_of",
    "scalar",
    "static_shape",
    "string_attr",
    "upcast",
]


class ConversionError(BackendError):
    """A node our converters cannot import (message names the op and the node)."""


def fail(op: str, attr: dict, problem: str) -> ConversionError:
    """An error naming ``op`` and the node (``attr["tvm_custom"]["name"]``), to raise."""
    name = attr.get("tvm_custom", {}).get("name", "")
    return ConversionError(f"{op} node {name!r}: {problem}")


def input_at(inputs, index: int):
    """Input ``index``, or None when it is omitted (absent or named "")."""
    return inputs[index] if len(inputs) > index else None


def num_outputs(attr: dict) -> int:
    return attr.get("tvm_custom", {}).get("num_outputs", 1)


def dtype_of(expr) -> str:
    return str(expr.ty.dtype)


def rank_of(expr) -> int:
    return int(expr.ty.ndim)


def static_shape(expr, op: str, attr: dict) -> list[int]:
    """The static shape of ``expr``; raises when a dimension is symbolic or unknown."""
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, (int, tirx.IntImm)) for d in shape):
        raise fail(op, attr, f"needs static shapes, got {shape}")
    return [int(d) for d in shape]


def constant(value, params, op: str, attr: dict, what: str) -> np.ndarray:
    """The numpy value of a constant input; raises when it is computed at run time."""
    if value is not None:
        value = onnx_frontend.get_constant(value, params)
    if not isinstance(value, tvm.ir.GenericConst):
        raise fail(op, attr, f"{what} must be a constant (an initializer), not a run-time value")
    return value.value.numpy()


def is_constant(value) -> bool:
    return isinstance(value, tvm.ir.GenericConst)


def string_attr(attr: dict, key: str, default: str) -> str:
    value = attr.get(key, default)
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


_NUMPY_DTYPES = {"bfloat16": "float32"}


def np_dtype(dtype: str) -> np.dtype:
    """A numpy dtype holding ``dtype``'s values (ml_dtypes for bfloat16)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def scalar(value: float | int | bool, dtype: str) -> relax.Expr:
    """A scalar constant of ``dtype`` (bfloat16 through float32: relax.const cannot hold it)."""
    if dtype == "bfloat16":
        return relax.op.astype(relax.const(value, "float32"), dtype)
    return relax.const(np.asarray(value, dtype=np_dtype(dtype)), dtype)


def array(values: Any, dtype: str) -> relax.Expr:
    """A constant tensor of ``dtype`` (bfloat16 through float32)."""
    if dtype == "bfloat16":
        return relax.op.astype(relax.const(np.asarray(values, dtype=np.float32), "float32"), dtype)
    return relax.const(np.asarray(values, dtype=np_dtype(dtype)), dtype)


def evaluate_reference(op: str, arrays: list[np.ndarray | None], attr: dict, opset: int):
    """``op`` on constant ``arrays`` (None: an omitted input), by onnx's reference
    implementation; the outputs as Relax constants (a Tuple when there are several)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = ["" if a is None else f"in{i}" for i, a in enumerate(arrays)]
    outputs = [f"out{i}" for i in range(num_outputs(attr))]
    attrs = {k: v for k, v in attr.items() if k != "tvm_custom"}
    node = helper.make_node(op, names, outputs, **attrs)
    graph = helper.make_graph(
        [node],
        op,
        [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for name, a in zip(names, arrays, strict=True)
            if a is not None
        ],
        [helper.make_tensor_value_info(name, 0, None) for name in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {name: a for name, a in zip(names, arrays, strict=True) if a is not None}
    results = [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]
    constants = [relax.const(r, str(r.dtype)) for r in results]
    return constants[0] if len(constants) == 1 else relax.Tuple(constants)


def constant_op(op: str) -> type[onnx_frontend.OnnxOpConverter]:
    """A converter for ``op`` whose inputs must all be constants: its output is computed at
    import time by onnx's reference implementation (window functions, mel filter banks)."""

    class ConstantOp(onnx_frontend.OnnxOpConverter):
        @classmethod
        def get_converter(cls, opset):
            def convert(bb, inputs, attr, params):
                arrays = [
                    None if x is None else constant(x, params, op, attr, f"input {i}")
                    for i, x in enumerate(inputs)
                ]
                return evaluate_reference(op, arrays, attr, opset)

            return convert

    ConstantOp.__name__ = ConstantOp.__qualname__ = op
    ConstantOp.__doc__ = (
        f"``{op}`` of constant inputs, evaluated at import time by onnx's reference."
    )
    return ConstantOp


_HALF = ("float16", "bfloat16")


def is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def upcast(bb, x):
    """``x`` in the dtype it is computed in, normalized (its type is known): float16 and
    bfloat16 in float32 (TVM's half-precision intrinsics are partial), others as they are."""
    return bb.normalize(relax.op.astype(x, "float32")) if dtype_of(x) in _HALF else x


def downcast(bb, y, dtype: str):
    """``y`` (computed from :func:`upcast` inputs) back in ``dtype``."""
    y = bb.normalize(y)
    return y if dtype_of(y) == dtype else relax.op.astype(y, dtype)
