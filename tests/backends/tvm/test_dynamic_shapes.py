"""Symbolic dimensions through TVM's importer (backends/tvm/dynamic_shapes.py).

A small graph with the shape arithmetic a decoder exported with a dynamic sequence length carries
(``torch.onnx.export(dynamo=True)``, ``Dim("seq")``): position ids from ``Range(0, seq)``, a
``seq + 1`` bound reshaped to one element for a ``Slice``, an ``Expand`` of a ``[1, seq]`` tensor
to a constant shape, and a LayerNorm over ``[1, seq, d]``. One build serves every length.
"""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import compiler.runtime
from backends.onnxruntime.reference import run_reference
from compiler.errors import InputError
from compiler.numerics import max_error
from tests.helpers import model_from_text, weights_text

pytestmark = pytest.mark.tvm

HEADER = '<ir_version: 10, opset_import: ["" : 18]>'


def _model():
    rng = np.random.default_rng(0)
    weights = {
        "table": rng.standard_normal((16, 8)).astype(np.float32),
        "gamma": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "beta": rng.standard_normal(8).astype(np.float32),
        "w": rng.standard_normal((8, 16)).astype(np.float32),
        "one_1": np.array([1], np.int64),
        "minus_one": np.array([-1], np.int64),
        "axes0": np.array([0], np.int64),
        "ones_2": np.array([1, 1], np.int64),
    }
    text = f"""
    {HEADER}
    dyn (float[1,seq,8] x) => (float[1,seq,16] y, int64[1,seq] kept) {weights_text(weights)} {{
      zero = Constant <value_int = 0> ()
      one = Constant <value_int = 1> ()
      shape = Shape <start = 1, end = 2> (x)
      n = Squeeze (shape)
      positions = Range (zero, n, one)
      embedded = Gather <axis = 0> (table, positions)
      h = Add (x, embedded)
      normed = LayerNormalization <axis = -1> (h, gamma, beta)
      y = MatMul (normed, w)
      n_plus_one = Add (one, n)
      end = Reshape (n_plus_one, minus_one)
      ids = Unsqueeze (positions, axes0)
      padded = Concat <axis = -1> (ids, ids)
      sliced = Slice (padded, one_1, end, one_1)
      kept = Expand (sliced, ones_2)
    }}
    """
    return model_from_text(text)


@pytest.fixture(scope="module")
def dynamic_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("dynamic") / "artifact"
    compiler.build(_model(), out, dims={"seq": 6}, latency_runs=0)
    return out


@pytest.mark.parametrize("length", [3, 11])  # the position table has 16 rows
def test_one_build_serves_several_lengths(dynamic_artifact, length):
    model = compiler.runtime.load(dynamic_artifact)
    assert model.inputs[0]["shape"] == [1, "seq", 8]
    x = np.random.default_rng(length).standard_normal((1, length, 8)).astype(np.float32)
    ours = model({"x": x})
    expected = run_reference(_model(), {"x": x})
    assert ours["y"].shape == (1, length, 16)
    np.testing.assert_array_equal(ours["kept"], expected["kept"])
    assert max(max_error(ours, expected).values()) < 1e-5


def test_the_fixed_dims_are_still_checked(dynamic_artifact):
    model = compiler.runtime.load(dynamic_artifact)
    with pytest.raises(InputError, match="must have shape"):
        model({"x": np.zeros((1, 4, 9), np.float32)})


def test_a_symbolic_dim_takes_one_size_across_inputs(tmp_path):
    model = model_from_text(
        f"""
        {HEADER}
        pair (float[1,seq] a, float[1,seq] b) => (float[1,seq] c) {{
          c = Add (a, b)
        }}
        """
    )
    compiler.build(model, tmp_path / "pair", dims={"seq": 4}, latency_runs=0)
    pair = compiler.runtime.load(tmp_path / "pair")
    ones = np.ones((1, 7), np.float32)
    np.testing.assert_array_equal(pair({"a": ones, "b": ones})["c"], 2 * ones)
    with pytest.raises(InputError, match="seq=5, but input 'a' has seq=7"):
        pair({"a": ones, "b": np.ones((1, 5), np.float32)})
