"""Operator fusion with onnxscript's rewrite rules, limited to ops both runtimes execute.

Rules are onnxscript's own (``onnxscript.rewriter.ort_fusions``: pattern / check / rewrite);
this module picks the ones whose fused op onnxruntime runs *and* the TVM backend compiles, and
applies them in order:

==========================  =========================================  ==========================
rule                        pattern                                    fused op
==========================  =========================================  ==========================
``erf-gelu``                ``0.5·x·(1 + erf(x/√2))`` (two orderings)  ``com.microsoft::Gelu``
``gelu``                    ``0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))`` ``com.microsoft::FastGelu``
                            and another erf ordering                   ``com.microsoft::Gelu``
``bias-gelu``               ``Gelu(x + b)``                            ``com.microsoft::BiasGelu``
``skip-layer-norm``         ``LayerNormalization(x + skip [+ b])``     ``SkipLayerNormalization``
==========================  =========================================  ==========================

The TVM backend compiles ``SkipLayerNormalization`` in the form onnxscript emits (no bias, sum
output used) through :mod:`backends.tvm.converters`.

Each fused op computes the same function as its pattern; ``FastGelu`` evaluates the same tanh
formula, so the pass is numerically exact up to float reassociation.

Coverage: the pass records how many times each rule fired, and how many *candidate anchors*
remain unfused (``Tanh``/``Erf``/``LayerNormalization`` nodes), in the model's metadata
under ``compiler.fusion`` (JSON), which ``inspect`` and the build report show.
"""

from __future__ import annotations

import collections
import json

import onnx_ir as ir

from compiler.quiet import quiet_loggers

__all__ = ["COVERAGE_KEY", "FusePass", "fusion_coverage"]

COVERAGE_KEY = "compiler.fusion"

# Ops that would have been absorbed by a rule: if any remain, a pattern did not match.
_ANCHORS = {
    "Tanh": "gelu",
    "Erf": "erf-gelu, gelu",
    "LayerNormalization": "skip-layer-norm",
}


def _rules():
    from onnxscript.rewriter.ort_fusions.bias_gelu import fuse_bias_gelu
    from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu
    from onnxscript.rewriter.ort_fusions.gelu import fuse_gelu
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_layer_normalization

    return [
        ("erf-gelu", fuse_erfgelu),
        ("gelu", fuse_gelu),
        ("bias-gelu", fuse_bias_gelu),
        ("skip-layer-norm", fuse_skip_layer_normalization),
    ]


def fusion_coverage(model: ir.Model) -> dict | None:
    """The coverage the ``fuse`` pass recorded on ``model``, or None if it did not run."""
    text = model.metadata_props.get(COVERAGE_KEY)
    return json.loads(text) if text else None


class FusePass(ir.passes.InPlacePass):
    """Fuses GELU variants (erf and tanh forms), bias+GELU and residual-add+LayerNorm.

    Cases handled: the patterns in the module docstring, in the main graph (onnxscript checks
    the shapes the LayerNorm rule needs: run ``cleanup`` first). Refused: ops inside subgraphs
    and functions are not rewritten.
    """

    name = "fuse"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        fired: dict[str, int] = {}
        with quiet_loggers("onnxscript"):
            for rule_name, apply in _rules():
                fired[rule_name] = int(apply(model))
        ops = collections.Counter(node.op_type for node in model.graph)
        unfused = {
            f"{op} (not matched by {rule})": ops[op] for op, rule in _ANCHORS.items() if ops[op]
        }
        coverage = {"fused": fired, "unfused": unfused}
        model.metadata_props[COVERAGE_KEY] = json.dumps(coverage, sort_keys=True)
        return ir.passes.PassResult(model, any(fired.values()))
