"""Relax pass: float32 ``R.matmul`` -> ``call_dps_packed("compiler.blas.matmul[_nt]")``.

TVM's untuned CPU GEMM runs at ~1 GFLOP/s and MetaSchedule plateaus near 100 (TVM_NOTES.md); a BLAS
reaches ~160 here. Products on constant weights do not reach this pass: they are imported as our
panel GEMM kernel (~215, :mod:`backends.tvm.panel_gemm`). Nor do products of two activations
with static shapes (attention's), which the pass before turns into our batched kernel
(:mod:`backends.tvm.activation_matmul`). What is left are products with symbolic shapes or
broadcast batches, and weights too narrow for panels. The call is destination-passing: TVM's
memory planner still allocates the output, and the packed function
(:mod:`compiler.kernels.blas`) fills it. Preconditions: both operands float32 with known rank ≥ 2
(batched shapes broadcast as in numpy). Other dtypes and rank-1 operands are left to TVM.
``matmul(a, permute_dims(w))`` where the permutation only swaps the last two axes becomes
``matmul_nt(a, w)``: the transposed weight is never materialized.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard

from backends.tvm.relax_rewrites import rewrite_every_function
from compiler.kernels.blas import MATMUL, MATMUL_NT

__all__ = ["OffloadMatmulToBlas"]


def _swaps_last_two_axes(expr: relax.Expr) -> relax.Expr | None:
    """The input of ``permute_dims(x, axes)`` if ``axes`` only swaps the last two, else None."""
    if not (isinstance(expr, relax.Call) and expr.op == tvm.ir.Op.get("relax.permute_dims")):
        return None
    ndim = expr.args[0].ty.ndim
    axes = expr.attrs.axes
    wanted = [*range(ndim - 2), ndim - 1, ndim - 2]
    if ndim < 2 or (axes is not None and [int(a) for a in axes] != wanted):
        return None
    return expr.args[0]


def _is_f32_matrix(expr: relax.Expr) -> bool:
    ty = expr.ty
    return isinstance(ty, relax.TensorType) and ty.dtype == "float32" and ty.ndim >= 2


@tvm.transform.module_pass(opt_level=0, name="OffloadMatmulToBlas")
class OffloadMatmulToBlas:
    """Rewrites every eligible matmul in every Relax function of the module."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        lhs, rhs = wildcard(), wildcard()
        pattern = is_op("relax.matmul")(lhs, rhs)

        def rewriter(expr: relax.Expr, matches) -> relax.Expr:
            a, b = matches[lhs], matches[rhs]
            out = expr.ty
            if not (_is_f32_matrix(a) and _is_f32_matrix(b)) or out.dtype != "float32":
                return expr
            transposed = _swaps_last_two_axes(b)
            if transposed is not None and _is_f32_matrix(transposed):
                return relax.call_dps_packed(MATMUL_NT, [a, transposed], out_ty=out)
            return relax.call_dps_packed(MATMUL, [a, b], out_ty=out)

        return rewrite_every_function(mod, pattern, rewriter)
