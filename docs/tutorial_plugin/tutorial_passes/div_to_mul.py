"""A rewrite rule: ``Div(x, c)`` by a float constant ``c`` becomes ``Mul(x, 1/c)``.

A multiply costs a fraction of a divide on CPUs and GPUs, yet compilers make this rewrite only
under fast-math flags (LLVM's ``arcp``): ``x/c`` and ``x·(1/c)`` can differ in the last bit.
The difference is at most about one unit in the last place, and none when ``1/c`` is exact
(``c`` a power of two, e.g. an attention scale of 8): the option ``exact_only`` limits the
rewrite to those.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet

_FLOATS = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16)
RECORD_KEY = "tutorial.div-to-mul"  # model metadata: what was rewritten and what was kept, why


class DivByConstantToMul(RewriteRuleClassBase):
    """Div(x, c) -> Mul(x, 1/c) for a float constant c whose reciprocal is finite."""

    def __init__(self, exact_only: bool = False) -> None:
        super().__init__(name="DivByConstantToMul")
        self.exact_only = exact_only

    def pattern(self, op, x, c):
        return op.Div(x, c)

    def check(self, context, x: ir.Value, c: ir.Value) -> MatchResult:
        # Never mutates; a failure carries its reason (MatchingTracer prints it).
        result = MatchResult()
        tensor = ir.convenience.get_const_tensor(c)
        if tensor is None:
            return result.fail("the divisor is not a constant", c)
        if tensor.dtype not in _FLOATS:
            return result.fail(f"the divisor is {tensor.dtype}, not a float", c)
        divisor = tensor.numpy()
        with np.errstate(divide="ignore", over="ignore"):
            reciprocal = np.reciprocal(divisor)
        if not np.all(np.isfinite(reciprocal)):
            return result.fail("1/c is not finite (c holds a zero or a subnormal)", c)
        if self.exact_only and not np.all(np.frexp(np.abs(divisor))[0] == 0.5):
            return result.fail("exact_only, and 1/c is not exact (c is not a power of two)", c)
        return result

    def rewrite(self, op, x: ir.Value, c: ir.Value):
        reciprocal = np.reciprocal(ir.convenience.get_const_tensor(c).numpy())
        return op.Mul(x, op.Constant(value=ir.tensor(reciprocal)))


class DivToMulPass(ir.passes.InPlacePass):
    """Replaces divisions by float constants with multiplications by their reciprocals.

    Cases handled: ``Div(x, c)`` where ``c`` is an initializer or a ``Constant`` node (scalar or
    a tensor broadcast against ``x``) of float32/float64/float16 with a finite reciprocal.
    Refused, with the reason recorded: a divisor that is not a constant, an integer divisor
    (integer division truncates), a divisor holding 0, and with ``exact_only`` a divisor whose
    reciprocal is not exact. The replaced constant is left for ``cleanup`` to remove. The model's
    metadata ``tutorial.div-to-mul`` (JSON) counts the rewrites and lists the Divs kept, why.
    """

    name = "div-to-mul"
    # x·(1/c) is within about one unit in the last place of x/c: --check-numerics allows this.
    tolerance = 1e-6

    def __init__(self, *, exact_only: bool = False) -> None:
        super().__init__()
        self.exact_only = exact_only

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rules = RewriteRuleSet([DivByConstantToMul.rule(exact_only=self.exact_only)])
        count = rules.apply_to_model(model)
        # ``check`` is pure, so it can say why each remaining Div stayed.
        checker = DivByConstantToMul(exact_only=self.exact_only)
        kept = {
            node.name or f"Div #{i}": checker.check(None, *node.inputs).reason
            for i, node in enumerate(model.graph)
            if node.op_type == "Div" and node.domain == ""
        }
        model.metadata_props[RECORD_KEY] = json.dumps({"rewritten": count, "kept": kept})
        return ir.passes.PassResult(model, modified=count > 0)
