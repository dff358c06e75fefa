"""backends/tvm/ops_extra.py: elementwise and tensor ops TVM's importer lacks or gets wrong,
compiled with TVM and compared with onnxruntime (onnx's reference where onnxruntime lacks the
op or its opset)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from backends.tvm.ops_common import ConversionError
from tests.backends.tvm.op_testing import check, model_from_text, run_tvm

pytestmark = pytest.mark.tvm


def _text(opset: int, body: str) -> str:
    return f'<ir_version: {onnx.IR_VERSION}, opset_import: ["" : {opset}]>\n{body}'


INF = np.inf

CASES = {
    "bitcast_float32_to_int32": (
        _text(26, "g (float[2,3] x) => (int32[2,3] y) { y = BitCast <to = 6> (x) }"),
        "onnx",
        {},
    ),
    "bitcast_uint64_to_float64": (
        _text(26, "g (uint64[4] x) => (double[4] y) { y = BitCast <to = 11> (x) }"),
        "onnx",
        {"x": np.array([0, 1, 2**63, 4607182418800017408], dtype=np.uint64)},
    ),
    "pow_int32_base_float_exponent": (
        _text(15, "g (int32[5] x, float[5] y) => (int32[5] z) { z = Pow (x, y) }"),
        "onnxruntime",
        {"x": [1, 2, 3, -2, 5], "y": [4.0, 5.0, 0.5, 3.0, 2.0]},
    ),
    "pow_float_base_int64_exponent": (
        _text(15, "g (float[4] x, int64[4] y) => (float[4] z) { z = Pow (x, y) }"),
        "onnxruntime",
        {"x": [1.5, -2.0, 3.0, 0.5], "y": [2, 3, -1, 4]},
    ),
    "mod_float_infinite_divisors": (
        _text(13, "g (float[8] x, float[8] y) => (float[8] z) { z = Mod <fmod = 0> (x, y) }"),
        "onnx",
        {
            "x": [-3.0, 3.0, -1.0, 1.0, 5.5, -5.5, INF, 1.0],
            "y": [INF, INF, -INF, -INF, 2.0, 2.0, 2.0, 0.0],
        },
    ),
    "bitshift_amounts_out_of_range": (
        _text(
            28,
            "g (int32[6] x, int32[6] y) => (int32[6] l, int32[6] r) {"
            ' l = BitShift <direction = "LEFT"> (x, y)'
            ' r = BitShift <direction = "RIGHT"> (x, y) }',
        ),
        "onnx",
        {"x": [-8, 4, -1, 7, -9, 1], "y": [32, 33, -1, 2, 40, 31]},
    ),
    "isinf_negative_only": (
        _text(20, "g (float[5] x) => (bool[5] y) { y = IsInf <detect_positive = 0> (x) }"),
        "onnxruntime",
        {"x": [1.0, INF, -INF, np.nan, -2.0]},
    ),
    "celu_float16": (
        _text(28, "g (float16[3,4] x) => (float16[3,4] y) { y = Celu <alpha = 2.0> (x) }"),
        "onnx",
        {},
    ),
    "swiglu_alpha": (
        _text(
            28,
            "g (float[2,6] a, float[2,6] b) => (float[2,6] y) { y = SwiGLU <alpha = 1.5> (a, b) }",
        ),
        "onnx",
        {},
    ),
    "eyelike_dtype_and_offset": (
        _text(22, "g (int32[3,5] x) => (double[3,5] y) { y = EyeLike <dtype = 11, k = -1> (x) }"),
        "onnxruntime",
        {},
    ),
    "dropout_inference_mask": (
        _text(13, "g (float[3,4] x) => (float[3,4] y, bool[3,4] mask) { y, mask = Dropout (x) }"),
        "onnxruntime",
        {},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_reference(name):
    text, reference, given = CASES[name]
    check(text, reference=reference, rtol=1e-3 if "float16" in name else 1e-5, **given)


def test_optional_has_element_of_an_omitted_input_is_false():
    model = model_from_text(_text(18, "g () => (bool y) { y = OptionalHasElement () }"))
    assert run_tvm(model, {})[0].item() is False


def test_dropout_in_training_mode_is_refused():
    model = model_from_text(
        _text(
            13,
            "g (float[3] x) => (float[3] y) <float r = {0.5}, bool t = {1}>"
            " { y = Dropout (x, r, t) }",
        )
    )
    with pytest.raises(Exception, match="training mode with a non-zero ratio") as info:
        run_tvm(model, {"x": np.ones(3, np.float32)})
    assert isinstance(info.value.__cause__, ConversionError)


SHAPE_CASES = {
    # Function bodies write Unsqueeze's axis as a scalar (Constant <value_int = -1>); TVM's
    # converter iterated it ("'int' object is not iterable").
    "unsqueeze_scalar_axis": _text(
        21,
        "g (float[2,3] x) => (float[2,3,1] y)"
        " { a = Constant <value_int = -1> () y = Unsqueeze (x, a) }",
    ),
    # Split of a constant shape is folded at import, so Expand gets a constant shape (TVM's
    # Split made it a run-time tensor: Expand's output had no known shape, which later
    # converters refuse, as in AffineGrid's expanded body).
    "expand_to_a_split_constant_shape": _text(
        21,
        "g (float[2,3] x) => (float[4,2,3] y) {"
        " sizes = Constant <value_ints = [4, 2, 3]> () parts = Constant <value_ints = [1, 2]> ()"
        " n, rest = Split (sizes, parts) shape = Concat <axis = 0> (n, rest)"
        " e = Expand (x, shape) y = Reshape (e, shape) }",
    ),
}


@pytest.mark.parametrize("name", list(SHAPE_CASES))
def test_shape_computations_of_function_bodies(name):
    check(SHAPE_CASES[name], reference="onnx")


def _expanded(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (one node) with the node replaced by its op's function body, as onnx's
    ``*_expanded`` node tests are built."""
    from onnx.backend.test.case.node import function_testcase_helper

    node = model.graph.node[0]
    types = [v.type for v in model.graph.input]
    [(nodes, _)], _ = function_testcase_helper(node, types, "t", model.opset_import)
    expanded = onnx.ModelProto()
    expanded.CopyFrom(model)
    del expanded.graph.node[:]
    expanded.graph.node.extend(nodes)
    return expanded


def test_affine_grid_function_body_matches_reference():
    """AffineGrid's expanded body (size an initializer): scalar Unsqueeze axes and Split of the
    constant size, both of which TVM's converters could not import."""
    from tests.backends.tvm.op_testing import REFERENCES

    model = model_from_text(
        _text(
            20,
            "g (float[2,2,3] theta) => (float[2,5,6,2] grid) <int64[4] size = {2, 3, 5, 6}>"
            " { grid = AffineGrid <align_corners = 1> (theta, size) }",
        )
    )
    theta = np.random.default_rng(0).standard_normal((2, 2, 3)).astype(np.float32)
    expected = REFERENCES["onnx"](model, {"theta": theta})[0]
    got = run_tvm(_expanded(model), {"theta": theta})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
