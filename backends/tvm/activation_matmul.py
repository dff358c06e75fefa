"""Relax pass: float32 products of two activations -> our batched GEMM kernel (CPU).

``R.matmul(A, B)`` with both operands float32 of static shapes, neither a constant, and the same
batch dimensions (``A [*batch, M, K]``, ``B [*batch, K, N]``; rank 2 counts as one batch) becomes

    reshape(call_tir(batch_gemm, [reshape(A, [T, M, K]), reshape(B, [T, K, N])]), [*batch, M, N])

with ``T = Π batch`` — attention's scores and context, per head
(:mod:`backends.tvm.batch_gemm_kernels`). Reshapes of contiguous tensors cost nothing in the VM.

Why not the BLAS (measured on this machine, 2 Zen 4 cores, 12 heads, ``128 × 64 · 64 × 128``
per head): the kernel runs both of GPT-2's attention products at ~215 GFLOP/s on two threads
(115 µs); numpy's OpenBLAS takes 270 µs on one thread and 160–540 µs on two, and each call
leaves TVM for Python. A decode step's single query row: 4–5 µs against 5–6.5 µs.

What is left — constant operands (narrow weights), broadcast batch dimensions, symbolic shapes,
other dtypes — goes on to :mod:`backends.tvm.blas_offload` or TVM.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax

from backends.tvm.batch_gemm_kernels import batch_gemm_func

__all__ = ["LowerActivationMatmuls"]


def _static_f32_shape(expr: relax.Expr) -> list[int] | None:
    """The static shape of a non-constant float32 tensor of rank ≥ 2, else None."""
    ty = expr.ty
    if isinstance(expr, tvm.ir.expr.Constant) or not isinstance(ty, relax.TensorType):
        return None
    if ty.dtype != "float32" or ty.shape is None or ty.ndim < 2:
        return None
    dims = list(ty.shape.values) if hasattr(ty.shape, "values") else list(ty.shape)
    if not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    return [int(d) for d in dims]


def product_shape(a: relax.Expr, b: relax.Expr) -> tuple[list[int], int, int, int] | None:
    """``(batch, M, K, N)`` when ``matmul(a, b)`` is one the kernel takes (see the module doc)."""
    sa, sb = _static_f32_shape(a), _static_f32_shape(b)
    if sa is None or sb is None or sa[:-2] != sb[:-2] or sa[-1] != sb[-2]:
        return None
    m, k, n = sa[-2], sa[-1], sb[-1]
    if min(m, k, n) == 0:
        return None
    return sa[:-2], m, k, n


@tvm.transform.module_pass(opt_level=0, name="LowerActivationMatmuls")
class LowerActivationMatmuls:
    """Rewrites every eligible matmul in every Relax function of the module."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        matmul = tvm.ir.Op.get("relax.matmul")

        @relax.expr_functor.mutator
        class Lower(relax.PyExprMutator):
            def __init__(self, mod):
                super().__init__(mod)
                self.kernels: dict[tuple[int, int, int, int], tvm.ir.GlobalVar] = {}

            def kernel(self, key: tuple[int, int, int, int]) -> tvm.ir.GlobalVar:
                if key not in self.kernels:
                    name = "batch_gemm_{}x{}x{}x{}".format(*key)
                    func = batch_gemm_func(*key).with_attr("global_symbol", name)
                    self.kernels[key] = self.builder_.add_func(func, name)
                return self.kernels[key]

            def visit_call_(self, call):
                call = super().visit_call_(call)
                if not isinstance(call, relax.Call) or call.op != matmul:
                    return call
                a, b = call.args
                found = product_shape(a, b)
                if found is None or call.ty.dtype != "float32":
                    return call
                batch, m, k, n = found
                t = math.prod(batch)
                emit = self.builder_.emit
                flat_a = a if len(batch) == 1 else emit(relax.op.reshape(a, (t, m, k)))
                flat_b = b if len(batch) == 1 else emit(relax.op.reshape(b, (t, k, n)))
                out = relax.call_tir(
                    self.kernel((t, m, k, n)),
                    [flat_a, flat_b],
                    relax.TensorType((t, m, n), "float32"),
                )
                if len(batch) == 1:
                    return out
                return relax.op.reshape(emit(out), (*batch, m, n))

        lower = Lower(mod)
        for gvar, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                lower.builder_.update_func(gvar, lower.visit_expr(func))
        return lower.builder_.get()
