"""Why did a Div stay? Runs the rule under onnxscript's MatchingTracer, which rewrites nothing.

PYTHONPATH=docs/tutorial_plugin python docs/tutorial_plugin/explain.py
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import MatchingTracer, RewriteRuleSet
from tutorial_passes import DivByConstantToMul

MODEL = """
<ir_version: 10, opset_import: ["" : 21]>
scale (float[2,8] x, float[2,8] d) => (float[2,8] y) {
  three = Constant<value = float {3.0}>()
  a = Div(x, three)
  y = Div(a, d)
}
"""


def main() -> None:
    model = ir.from_onnx_text(MODEL)
    tracer = MatchingTracer()
    rules = RewriteRuleSet([DivByConstantToMul.rule(exact_only=True)])
    rules.apply_to_model(model, tracer=tracer)  # with a tracer, rules match but never rewrite
    for rule, matches in tracer.best_matches_map.items():
        for info in matches:
            node = info.root_node
            print(f"{rule.name} at {node.op_type} -> {node.outputs[0].name}: {info.status.name}")
            print(f"  reason: {info.match_result.reason}")
    tracer.report()  # onnxscript's own summary of the best (partial) match


if __name__ == "__main__":
    main()
