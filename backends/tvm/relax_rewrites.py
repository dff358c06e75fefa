"""Small Relax rewrites that make TVM's CPU code vectorizable.

* :class:`SimplifyPower`: ``power(x, c)`` for a scalar constant ``c`` in {1, 2, 3, 4} becomes a
  chain of multiplies. ``powf`` is a scalar libm call that LLVM cannot vectorize: GELU-tanh's
  ``pow(x, 3)`` cost 4–6 ms per call (TVM_NOTES.md). ``x*x*x`` differs from ``powf(x, 3)`` by at
  most a couple of ulps.

* :class:`HalfMatmulInFloat`: a ``matmul`` of float16/bfloat16 operands computes in float32 —
  the operands are upcast, multiplied (by the BLAS, on CPUs) and the product cast back. TVM's
  legalized 16-bit matmul accumulates in 16 bits: MiniLM with fp16 activations drifted by 0.11
  (normalized max error) from onnxruntime, whose kernels accumulate in float32. CPUs without
  16-bit arithmetic (AVX-512 FP16) convert every element to float32 anyway.

TVM's own ``FastMathTransform`` (polynomial ``exp``/``tanh``/``erf``/softmax) is applied next to
it in :mod:`backends.tvm.pipeline`.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

__all__ = ["HalfMatmulInFloat", "SimplifyPower", "rewrite_every_function"]

_HALF = ("float16", "bfloat16")

_MAX_EXPONENT = 4


def rewrite_every_function(mod: tvm.IRModule, pattern, rewriter) -> tvm.IRModule:
    """A copy of ``mod`` with ``rewrite_call(pattern, rewriter)`` applied to each Relax function.

    ``rewriter(expr, matches)`` returns the replacement, or ``expr`` itself to decline.
    """
    result = mod.clone()  # a pass must not mutate its input module
    for gvar, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            result.update_func(gvar, rewrite_call(pattern, rewriter, func))
    return result


def _scalar(const) -> float | None:
    """The value of a one-element constant (TVM 0.27 ``GenericConst``: ``.value``), else None."""
    value = const.value if hasattr(const, "value") else const.data
    array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    return float(array.reshape(())) if array.size == 1 else None


@tvm.transform.module_pass(opt_level=0, name="SimplifyPower")
class SimplifyPower:
    """``power(x, c)`` with c a small positive integer constant -> ``x * x * ...``."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        base, exponent = wildcard(), is_const()
        pattern = is_op("relax.power")(base, exponent)

        def rewriter(expr: relax.Expr, matches) -> relax.Expr:
            x, c = matches[base], _scalar(matches[exponent])
            if c is None or c != np.round(c) or not 1 <= c <= _MAX_EXPONENT:
                return expr
            if x.ty.dtype != expr.ty.dtype or list(x.ty.shape) != list(expr.ty.shape):
                return expr  # the power broadcasts: keep it
            result = x
            for _ in range(int(c) - 1):
                result = relax.op.multiply(result, x)
            return result

        return rewrite_every_function(mod, pattern, rewriter)


@tvm.transform.module_pass(opt_level=0, name="HalfMatmulInFloat")
class HalfMatmulInFloat:
    """``matmul(a, b)`` on 16-bit floats -> ``astype(matmul(f32(a), f32(b)), half)``."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        a, b = wildcard(), wildcard()
        pattern = is_op("relax.matmul")(a, b)

        def rewriter(expr: relax.Expr, matches) -> relax.Expr:
            dtype = expr.ty.dtype
            if dtype not in _HALF:
                return expr
            operands = [
                relax.op.astype(x, "float32") if x.ty.dtype in _HALF else x
                for x in (matches[a], matches[b])
            ]
            return relax.op.astype(relax.op.matmul(*operands, out_dtype="float32"), dtype)

        return rewrite_every_function(mod, pattern, rewriter)
