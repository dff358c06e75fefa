"""Small Relax rewrites for TVM's CPU code: vectorizable forms, and 16-bit math done in float32.

* :class:`SimplifyPower`: ``power(x, c)`` for a scalar constant ``c`` in {1, 2, 3, 4} becomes a
  chain of multiplies. ``powf`` is a scalar libm call that LLVM cannot vectorize: GELU-tanh's
  ``pow(x, 3)`` cost 4–6 ms per call (TVM_NOTES.md). ``x*x*x`` differs from ``powf(x, 3)`` by at
  most a couple of ulps.

* :class:`HalfMatmulInFloat`: a ``matmul`` of float16/bfloat16 operands computes in float32 —
  the operands are upcast, multiplied (by the BLAS, on CPUs) and the product cast back. TVM's
  legalized 16-bit matmul accumulates in 16 bits: MiniLM with fp16 activations drifted by 0.11
  (normalized max error) from onnxruntime, whose kernels accumulate in float32. CPUs without
  16-bit arithmetic (AVX-512 FP16) convert every element to float32 anyway. Convolutions
  (``conv1d``…``conv3d`` and the transposed ones) likewise: TVM's float16 depthwise conv of 4
  taps was 1 ulp off onnx's reference (float64, rounded once) on 44% of its outputs, and 3e-3
  after CausalConvWithState's SiLU.

* :class:`HalfMathInFloat`: transcendental ops of float16/bfloat16 tensors (``exp``, ``log``,
  ``tanh``, ``sigmoid``, ``erf``, ``log_softmax``, ``gelu``, ``gelu_tanh``, ``silu``) compute
  in float32 with one rounding at the end: ``astype(f(astype(x, float32)), half)``, as numpy
  evaluates ``exp`` of a float16 (onnx's reference). ``softmax`` takes the reference's steps,
  each computed in float32 and rounded to the half type: ``d = x - max(x)``, ``e = exp(d)``,
  ``s = Σ e`` (accumulated in float32, as numpy's float16 sums are), ``e / s``. TVM computes
  them in 16 bits: its softmax (``FastMathTransform``'s ``exp`` polynomial, a float16 row
  sum) was more than 1e-3 (relative) off on a third of a [.., 64] softmax's elements; a
  float32 softmax rounded once still differed from the reference by 2 float16 ulps on
  attention outputs (test_attention_4d_causal_fp16_expanded).

* :class:`SigmoidViaExp`: float32 ``sigmoid(x)`` becomes ``1 / (1 + exp(-x))`` (``silu(x)``,
  ``x`` times that), which ``FastMathTransform`` then turns into its vectorizable ``exp``
  polynomial. TVM lowers ``sigmoid`` to LLVM's ``exp``, a scalar libm call per element: a
  Llama-style model's SwiGLU (128 × 2304) took 925 µs per layer, 11 ms of a 139 ms prefill.

* :class:`AllocateEmptyConstants`: constants with no elements become allocations, which the
  compiled library can hold (it cannot load such a constant back).

* :class:`OrderShapeDefinitions`: after fusion, a kernel using a dim read at run time is moved
  after the ``match_cast`` that defines the dim (TVM's ``FuseOps`` may place it before).

TVM's own ``FastMathTransform`` (polynomial ``exp``/``tanh``/``erf``/softmax) is applied after
them in :mod:`backends.tvm.pipeline`; it then works in float32 (relative error ~1e-7).
"""

from __future__ import annotations

import heapq
import inspect

import numpy as np
import tvm
import tvm.tirx.analysis
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

__all__ = [
    "HALF_MATH_OPS",
    "AllocateEmptyConstants",
    "HalfMathInFloat",
    "HalfMatmulInFloat",
    "OrderShapeDefinitions",
    "SigmoidViaExp",
    "SimplifyPower",
    "rewrite_every_function",
]

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
    """``matmul(a, b)`` on 16-bit floats -> ``astype(matmul(f32(a), f32(b)), half)``; the same
    for the convolutions of ``_CONV_OPS`` (their attributes kept, ``out_dtype`` float32)."""

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

        def conv_rewriter(expr: relax.Expr, matches) -> relax.Expr:
            dtype = expr.ty.dtype
            if dtype not in _HALF:
                return expr
            make = getattr(relax.op.nn, expr.op.name.removeprefix("relax.nn."))
            fields = [
                name
                for name in inspect.signature(make).parameters
                if name not in ("data", "weight", "out_dtype")
            ]
            operands = [
                relax.op.astype(v, "float32") if v.ty.dtype in _HALF else v
                for v in (matches[a], matches[b])
            ]
            attrs = {name: getattr(expr.attrs, name) for name in fields}
            return relax.op.astype(make(*operands, **attrs, out_dtype="float32"), dtype)

        conv = is_op(_CONV_OPS[0])(a, b)
        for name in _CONV_OPS[1:]:
            conv = conv | is_op(name)(a, b)
        mod = rewrite_every_function(mod, pattern, rewriter)
        return rewrite_every_function(mod, conv, conv_rewriter)


_CONV_OPS = tuple(
    f"relax.nn.{name}"
    for name in (
        "conv1d",
        "conv2d",
        "conv3d",
        "conv1d_transpose",
        "conv2d_transpose",
        "conv3d_transpose",
    )
    if hasattr(relax.op.nn, name)
)

HALF_MATH_OPS = (
    "relax.exp",
    "relax.log",
    "relax.tanh",
    "relax.sigmoid",
    "relax.erf",
    "relax.nn.log_softmax",
    "relax.nn.gelu",
    "relax.nn.gelu_tanh",
    "relax.nn.silu",
)
"""Unary ops (attributes kept, e.g. log_softmax's ``axis``) that :class:`HalfMathInFloat` computes
in float32 (``relax.nn.softmax`` too, in steps: :func:`_half_softmax`)."""


def _half_softmax(x: relax.Expr, axis: int, dtype: str) -> relax.Expr:
    """Softmax of a 16-bit ``x`` as onnx's reference computes it: each step in float32, rounded
    to ``dtype`` (numpy's float16 arithmetic; its sums accumulate in float32)."""

    def half(value):
        return relax.op.astype(value, dtype)

    def wide(value):
        return relax.op.astype(value, "float32")

    shifted = relax.op.subtract(x, relax.op.max(x, axis=[axis], keepdims=True))
    exps = half(relax.op.exp(wide(shifted)))
    total = half(relax.op.sum(wide(exps), axis=[axis], keepdims=True))
    return relax.op.divide(exps, total)


@tvm.transform.module_pass(opt_level=0, name="HalfMathInFloat")
class HalfMathInFloat:
    """``f(x)`` on a 16-bit float tensor -> ``astype(f(astype(x, float32)), half)`` for each op
    of :data:`HALF_MATH_OPS`; ``softmax`` -> :func:`_half_softmax`."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        x = wildcard()
        pattern = is_op("relax.nn.softmax")(x)
        for name in HALF_MATH_OPS:
            pattern = pattern | is_op(name)(x)

        def rewriter(expr: relax.Expr, matches) -> relax.Expr:
            dtype = expr.ty.dtype
            if dtype not in _HALF or matches[x].ty.dtype != dtype:
                return expr
            if expr.op.name == "relax.nn.softmax":
                return _half_softmax(matches[x], int(expr.attrs.axis), dtype)
            upcast = relax.op.astype(matches[x], "float32")
            return relax.op.astype(relax.Call(expr.op, [upcast], expr.attrs), dtype)

        return rewrite_every_function(mod, pattern, rewriter)


@tvm.transform.module_pass(opt_level=0, name="SigmoidViaExp")
class SigmoidViaExp:
    """float32 ``sigmoid(x)`` -> ``1 / (1 + exp(-x))``; ``silu(x)`` -> ``x`` times that."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        x = wildcard()
        pattern = is_op("relax.sigmoid")(x) | is_op("relax.nn.silu")(x)

        def rewriter(expr: relax.Expr, matches) -> relax.Expr:
            value = matches[x]
            if expr.ty.dtype != "float32" or value.ty.dtype != "float32":
                return expr
            one = relax.const(1.0, "float32")
            sigmoid = relax.op.divide(
                one, relax.op.add(one, relax.op.exp(relax.op.negative(value)))
            )
            return sigmoid if expr.op.name == "relax.sigmoid" else relax.op.multiply(value, sigmoid)

        return rewrite_every_function(mod, pattern, rewriter)


@tvm.transform.module_pass(opt_level=0, name="AllocateEmptyConstants")
class AllocateEmptyConstants:
    """A constant with no elements (shape ``[2, 4, 0]``) -> ``R.builtin.alloc_tensor`` of its
    shape and dtype.

    Its values are none, so any tensor of that shape is it. TVM's library writes such a
    constant but cannot read it back ("Invalid DLTensor file format" when the artifact
    loads): CausalConvWithState's expanded body with ``kernel_size = 1`` pads its input with
    ``ConstantOfShape([B, C, 0])``, folded at import. Run after the last ``FoldConstant``
    (which folds a ``zeros`` call back into a constant).
    """

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        @relax.expr_functor.mutator
        class Allocate(relax.PyExprMutator):
            def visit_generic_const_(self, const):
                shape = getattr(const.ty, "shape", None)
                if not isinstance(const.ty, relax.TensorType) or shape is None:
                    return const
                shape = [int(d) for d in shape]
                if np.prod(shape, dtype=np.int64) != 0:
                    return const
                return relax.op.builtin.alloc_tensor(relax.ShapeExpr(shape), str(const.ty.dtype), 0)

        result = mod.clone()
        for gvar, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                result.update_func(gvar, Allocate(mod).visit_expr(func))
        return result


def _symbolic_vars(expr: relax.Expr, found: set) -> set:
    """The TIR variables ``expr`` passes on: in its shapes, prim-value arguments and the types
    it is called with (a ``call_tir``'s output type)."""
    if tvm.ir.is_prim_expr(expr):  # a TIR variable is a relax.Var of PrimType too
        found.update(tvm.tirx.analysis.undefined_vars(expr))
    elif isinstance(expr, relax.ShapeExpr):
        for dim in expr.values:
            _symbolic_vars(dim, found)
    elif isinstance(expr, relax.Tuple):
        for field in expr.fields:
            _symbolic_vars(field, found)
    elif isinstance(expr, relax.Call):
        for arg in expr.args:
            _symbolic_vars(arg, found)
        for ty in expr.ty_args:
            found.update(relax.analysis.tir_vars_in_type(ty))
    return found


def _shape_ordered(bindings: list, known: set) -> list | None:
    """``bindings`` (one dataflow block) in a stable topological order in which each binding
    follows the ``match_cast`` defining a symbolic dim it uses (one not in ``known``, the dims
    the function's parameters define); None when already so, or when no order exists."""
    defined_at = {}
    for i, binding in enumerate(bindings):
        if isinstance(binding, relax.MatchCast):
            checked = set(relax.analysis.tir_vars_in_type(binding.value.ty)) | known
            for var in relax.analysis.definable_tir_vars_in_type(binding.ty):
                if var not in checked:
                    defined_at.setdefault(var, i)
    if not defined_at:
        return None
    position = {binding.var: i for i, binding in enumerate(bindings)}
    needs = []
    for i, binding in enumerate(bindings):
        used = {position[v] for v in relax.analysis.free_vars(binding.value) if v in position}
        symbols = _symbolic_vars(
            binding.value, set(relax.analysis.tir_vars_in_type(binding.var.ty))
        )
        used |= {defined_at[s] for s in symbols if defined_at.get(s, i) != i}
        needs.append(used)
    if all(j < i for i, used in enumerate(needs) for j in used):
        return None
    users = [[] for _ in bindings]
    waiting = [len(used) for used in needs]
    for i, used in enumerate(needs):
        for j in used:
            users[j].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:  # stable: the earliest ready binding first
        i = heapq.heappop(ready)
        order.append(i)
        for user in users[i]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) < len(bindings):
        return None  # a cycle: not a definition this pass understands; left as it is
    return [bindings[i] for i in order]


@tvm.transform.module_pass(opt_level=0, name="OrderShapeDefinitions")
class OrderShapeDefinitions:
    """Reorders each dataflow block so a binding using a symbolic dim follows the
    ``match_cast`` that defines it.

    A size read at run time (``Range(0, n)`` with ``n`` an input: the window functions'
    expanded bodies) is ``match_cast`` into a symbolic dim ``range_len_0``. TVM's ``FuseOps``
    places a fused kernel where its first op was, before that ``match_cast`` when the group
    also holds earlier ops, and the build fails ("PrimExpr T.int64(4) * range_len_0 … has not
    been computed"). Dataflow blocks are pure: any order respecting the dependencies is the
    same program. Run after fusion.
    """

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        @relax.expr_functor.mutator
        class Order(relax.PyExprMutator):
            def __init__(self, mod, known):
                super().__init__(mod)
                self.known = known

            def visit_dataflow_block_(self, block):
                ordered = _shape_ordered(list(block.bindings), self.known)
                if ordered is not None:
                    block = relax.DataflowBlock(ordered)
                return super().visit_dataflow_block_(block)

        result = mod.clone()
        for gvar, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                known = {
                    var
                    for param in func.params
                    for var in relax.analysis.definable_tir_vars_in_type(param.ty)
                }
                result.update_func(gvar, Order(mod, known).visit_expr(func))
        return result
