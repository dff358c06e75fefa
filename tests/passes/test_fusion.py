"""The ``fuse`` pass: expected fused graphs, numerics in onnxruntime and TVM, coverage."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from backends.onnxruntime.reference import run_reference
from backends.tvm import compile_model
from compiler.numerics import max_error
from passes.cleanup import ShapeInferencePass
from passes.fusion import FusePass, fusion_coverage
from tests.helpers import assert_same_outputs, model_from_text, seeded_inputs, weights_text

HEADER = '<ir_version: 10, opset_import: ["" : 18, "com.microsoft" : 1]>'
BIAS = {"b": np.linspace(-1, 1, 64).astype(np.float32)}

ERF_GELU = f"""{HEADER}
g (float[8,64] x) => (float[8,64] y) {{
  sqrt2 = Constant <value = float {{1.4142135}}> ()
  one = Constant <value = float {{1.0}}> ()
  half = Constant <value = float {{0.5}}> ()
  d = Div(x, sqrt2)
  e = Erf(d)
  p = Add(e, one)
  m = Mul(x, p)
  y = Mul(m, half)
}}
"""

BIAS_ERF_GELU = f"""{HEADER}
g (float[8,64] x) => (float[8,64] y) {weights_text(BIAS)} {{
  xb = Add(x, b)
  sqrt2 = Constant <value = float {{1.4142135}}> ()
  one = Constant <value = float {{1.0}}> ()
  half = Constant <value = float {{0.5}}> ()
  d = Div(xb, sqrt2)
  e = Erf(d)
  p = Add(e, one)
  m = Mul(xb, p)
  y = Mul(m, half)
}}
"""

TANH_GELU = f"""{HEADER}
g (float[8,64] x) => (float[8,64] y) {{
  three = Constant <value = float {{3.0}}> ()
  c = Constant <value = float {{0.044715}}> ()
  k = Constant <value = float {{0.7978845608}}> ()
  one = Constant <value = float {{1.0}}> ()
  half = Constant <value = float {{0.5}}> ()
  t1 = Pow(x, three)
  t2 = Mul(c, t1)
  t3 = Add(x, t2)
  t4 = Mul(k, t3)
  t5 = Tanh(t4)
  t6 = Add(t5, one)
  t7 = Mul(half, t6)
  y = Mul(x, t7)
}}
"""

LN = {
    "gamma": np.linspace(0.5, 1.5, 64).astype(np.float32),
    "beta": np.linspace(-1, 1, 64).astype(np.float32),
}
SKIP_LAYER_NORM = f"""{HEADER}
g (float[2,8,64] x, float[2,8,64] skip) => (float[2,8,64] y, float[2,8,64] residual)
  {weights_text(LN)} {{
  s = Add(x, skip)
  n = LayerNormalization <axis = -1, epsilon = 1e-5> (s, gamma, beta)
  y = Relu(n)
  residual = Add(s, n)
}}
"""

UNRELATED_TANH = f"""{HEADER}
g (float[8,64] x) => (float[8,64] y) {{
  t = Tanh(x)
  y = Relu(t)
}}
"""


@pytest.mark.parametrize(
    ("text", "ops", "rule"),
    [
        (ERF_GELU, ["com.microsoft::Gelu"], "gelu"),
        (BIAS_ERF_GELU, ["com.microsoft::BiasGelu"], "bias-gelu"),
        (TANH_GELU, ["com.microsoft::FastGelu"], "gelu"),
        (
            SKIP_LAYER_NORM,
            ["com.microsoft::SkipLayerNormalization", "Relu", "Add"],
            "skip-layer-norm",
        ),
    ],
)
def test_fuses_to_one_op_with_the_same_outputs(text, ops, rule):
    before, after = model_from_text(text), model_from_text(text)
    ShapeInferencePass()(after)  # the LayerNorm rule checks shapes
    result = FusePass()(after)
    assert result.modified
    got = [f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in result.model.graph]
    assert [op for op in got if op != "Constant"] == ops
    assert fusion_coverage(result.model)["fused"][rule] >= 1
    assert_same_outputs(before, result.model, tolerance=1e-6)


def test_unmatched_graph_is_unmodified_and_coverage_says_why():
    result = FusePass()(model_from_text(UNRELATED_TANH))
    assert not result.modified
    coverage = fusion_coverage(result.model)
    assert set(coverage["fused"].values()) == {0}
    assert coverage["unfused"] == {"Tanh (not matched by gelu)": 1}


@pytest.mark.tvm
@pytest.mark.parametrize("text", [ERF_GELU, BIAS_ERF_GELU, TANH_GELU, SKIP_LAYER_NORM])
def test_the_tvm_backend_compiles_the_fused_ops(text):
    import compiler.kernels  # noqa: F401

    model = model_from_text(text)
    ShapeInferencePass()(model)
    assert FusePass()(model).modified
    inputs = seeded_inputs(model)
    compiled = compile_model(model, "llvm")
    vm = tvm.runtime.vm.VirtualMachine(compiled.executable, tvm.cpu())
    args = [tvm.runtime.tensor(inputs[n]) for n in compiled.input_names]
    out = vm["main"](*args, *[tvm.runtime.tensor(p) for p in compiled.params])
    values = [out] if hasattr(out, "numpy") else list(out)
    names = [v.name for v in model.graph.outputs]
    got = {name: v.numpy() for name, v in zip(names, values, strict=True)}
    errors = max_error(got, run_reference(model, inputs))
    assert max(errors.values()) <= 1e-5, errors
