"""Each cleanup pass: before/expected graphs, numeric equivalence in onnxruntime, and the
``modified`` contract (true on a match, false on a graph it does not apply to)."""

from __future__ import annotations

import pytest

from passes.cleanup import (
    CleanupPass,
    CommonSubexpressionEliminationPass,
    ConstantFoldingPass,
    DeadCodeEliminationPass,
    DeduplicateInitializersPass,
    IdentityEliminationPass,
    OnnxSimplifierPass,
    ShapeInferencePass,
)
from tests.helpers import assert_same_outputs, canonical, model_from_text

EXACT = 0.0  # these passes only remove or merge work: outputs must be bit-identical
FOLDING = 1e-6  # constant folding may reassociate float arithmetic

ALREADY_CLEAN = """
g (float[2,3] x) => (float[2,3] y) {
  a = Relu(x)
  y = Neg(a)
}
"""


def _apply(pass_cls, text, **options):
    before = model_from_text(text)
    after = model_from_text(text)
    result = pass_cls(**options)(after)
    return before, result


CASES = [
    (
        DeadCodeEliminationPass,
        """
        g (float[2,3] x) => (float[2,3] y) {
          a = Relu(x)
          dead = Neg(a)
          dead2 = Exp(dead)
          y = Abs(a)
        }
        """,
        """
        g (float[2,3] x) => (float[2,3] y) {
          a = Relu(x)
          y = Abs(a)
        }
        """,
        EXACT,
    ),
    (
        IdentityEliminationPass,
        """
        g (float[2,3] x) => (float[2,3] y) {
          a = Identity(x)
          b = Relu(a)
          y = Identity(b)
        }
        """,
        """
        g (float[2,3] x) => (float[2,3] y) {
          y = Relu(x)
        }
        """,
        EXACT,
    ),
    (
        CommonSubexpressionEliminationPass,
        """
        g (float[2,3] x) => (float[2,3] y) {
          a = Relu(x)
          b = Relu(x)
          y = Add(a, b)
        }
        """,
        """
        g (float[2,3] x) => (float[2,3] y) {
          a = Relu(x)
          y = Add(a, a)
        }
        """,
        EXACT,
    ),
    (
        DeduplicateInitializersPass,
        """
        g (float[2,3] x) => (float[2,3] y)
          <float[3] c1 = {1.0, 2.0, 3.0}, float[3] c2 = {1.0, 2.0, 3.0}> {
          a = Add(x, c1)
          b = Mul(a, c2)
          y = Sub(b, c2)
        }
        """,
        """
        g (float[2,3] x) => (float[2,3] y) <float[3] c1 = {1.0, 2.0, 3.0}> {
          a = Add(x, c1)
          b = Mul(a, c1)
          y = Sub(b, c1)
        }
        """,
        EXACT,
    ),
    (
        ConstantFoldingPass,
        """
        g (float[2,3] x) => (float[2,3] y) <float[3] c = {1.0, 2.0, 3.0}> {
          two = Constant <value = float[1] {2.0}> ()
          d = Mul(c, two)
          e = Sqrt(d)
          y = Add(x, e)
        }
        """,
        """
        g (float[2,3] x) => (float[2,3] y)
          <float[3] e = {1.4142135, 2.0, 2.4494898}> {
          y = Add(x, e)
        }
        """,
        FOLDING,
    ),
]


@pytest.mark.parametrize(("pass_cls", "before_text", "expected_text", "tolerance"), CASES)
def test_rewrites_to_the_expected_graph_with_the_same_outputs(
    pass_cls, before_text, expected_text, tolerance
):
    before, result = _apply(pass_cls, before_text)
    assert result.modified
    expected = model_from_text(expected_text)
    got, want = canonical(result.model), canonical(expected)
    if pass_cls is ConstantFoldingPass:
        # Folded constants are compared numerically below, not by their printed digits.
        got = [tuple(str(x)[:12] for x in row) for row in got]
        want = [tuple(str(x)[:12] for x in row) for row in want]
    assert got == want
    assert_same_outputs(before, result.model, tolerance=tolerance)


@pytest.mark.parametrize(
    "pass_cls",
    [
        DeadCodeEliminationPass,
        IdentityEliminationPass,
        CommonSubexpressionEliminationPass,
        ConstantFoldingPass,
        DeduplicateInitializersPass,
    ],
)
def test_reports_unmodified_on_a_clean_graph(pass_cls):
    _, result = _apply(pass_cls, ALREADY_CLEAN)
    assert not result.modified
    assert canonical(result.model) == canonical(model_from_text(ALREADY_CLEAN))


def test_fold_constants_refuses_to_duplicate_large_weights():
    import numpy as np

    from tests.helpers import weights_text

    w = {"w": np.arange(64 * 64, dtype=np.float32).reshape(64, 64)}
    text = f"""
    g (float[2,64] x) => (float[2,64] y) {weights_text(w)} {{
      t = Neg(w)
      y = MatMul(x, t)
    }}
    """
    before, result = _apply(ConstantFoldingPass, text, input_size_limit=1024)
    assert not result.modified
    assert [n.op_type for n in result.model.graph] == ["Neg", "MatMul"]
    before, result = _apply(ConstantFoldingPass, text, input_size_limit=1 << 20)
    assert result.modified and [n.op_type for n in result.model.graph] == ["MatMul"]
    assert_same_outputs(before, result.model, tolerance=EXACT)


def test_shape_inference_annotates_values():
    text = """
    g (float[2,3] x) => (float[3,2] y) {
      a = Relu(x)
      y = Transpose <perm = [1, 0]> (a)
    }
    """
    before, result = _apply(ShapeInferencePass, text)
    assert before.graph.node(0).outputs[0].shape is None
    assert result.modified
    assert list(result.model.graph.node(0).outputs[0].shape) == [2, 3]
    assert_same_outputs(before, result.model, tolerance=EXACT)


def test_cleanup_combines_the_passes_to_a_fixed_point():
    text = """
    g (float[2,3] x) => (float[2,3] y) <float[3] c = {1.0, 4.0, 9.0}> {
      a = Identity(x)
      s1 = Sqrt(c)
      s2 = Sqrt(c)
      b = Add(a, s1)
      d = Add(a, s2)
      dead = Neg(d)
      y = Mul(b, d)
    }
    """
    before, result = _apply(CleanupPass, text)
    assert result.modified
    ops = [n.op_type for n in result.model.graph]
    assert ops == ["Add", "Mul"]
    assert_same_outputs(before, result.model, tolerance=FOLDING)
    assert not CleanupPass()(result.model).modified


def test_onnxsim_returns_a_new_model_with_the_same_outputs():
    text = """
    g (float[2,3] x) => (float[2,3] y) <float[3] c = {1.0, 4.0, 9.0}> {
      s = Sqrt(c)
      a = Identity(x)
      y = Add(a, s)
    }
    """
    before, result = _apply(OnnxSimplifierPass, text)
    assert result.modified
    assert [n.op_type for n in result.model.graph] == ["Add"]
    assert_same_outputs(before, result.model, tolerance=FOLDING)
