"""backends/tvm/ops_reduce.py: reductions, scans, Det, TopK and BatchNormalization training,
compiled with TVM and compared with onnxruntime (onnx's reference where onnxruntime lacks the
op or its opset)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.backends.tvm.op_testing import check

pytestmark = pytest.mark.tvm


def _text(opset: int, body: str) -> str:
    return f'<ir_version: {onnx.IR_VERSION}, opset_import: ["" : {opset}]>\n{body}'


CASES = {
    "reduce_max_of_bools": (
        _text(
            20,
            "g (bool[4,3] x) => (bool[4,1] y) <int64[1] axes = {1}> { y = ReduceMax (x, axes) }",
        ),
        "onnxruntime",
        {},
    ),
    "reduce_prod_and_log_sum_exp_of_empty_sets": (
        _text(
            18,
            "g (float[2,0,3] x) => (float[2,1,3] p, float[2,1,3] l) <int64[1] axes = {1}>"
            " { p = ReduceProd (x, axes) l = ReduceLogSumExp (x, axes) }",
        ),
        "onnxruntime",
        {},
    ),
    "lp_normalization_l1_with_zero_rows": (
        _text(
            22, "g (float[3,4] x) => (float[3,4] y) { y = LpNormalization <axis = 1, p = 1> (x) }"
        ),
        "onnxruntime",
        {"x": [[1, -2, 3, -4], [0, 0, 0, 0], [0.5, 0.25, -1, 2]]},
    ),
    "cumprod_exclusive_reverse": (
        _text(
            26,
            "g (float[2,5] x) => (float[2,5] y) <int64 axis = {1}>"
            " { y = CumProd <exclusive = 1, reverse = 1> (x, axis) }",
        ),
        "onnx",
        {},
    ),
    "det_batch_of_3x3": (
        _text(22, "g (float[4,3,3] x) => (float[4] y) { y = Det (x) }"),
        "onnxruntime",
        {},
    ),
    "batchnorm_training_running_statistics": (
        _text(
            15,
            "g (float[2,3,4] x, float[3] s, float[3] b, float[3] m, float[3] v)"
            " => (float[2,3,4] y, float[3] rm, float[3] rv)"
            " { y, rm, rv = BatchNormalization <training_mode = 1, momentum = 0.8>"
            " (x, s, b, m, v) }",
        ),
        "onnx",
        {"v": [1.0, 0.5, 2.0]},
    ),
    "topk_uint64": (
        _text(
            24,
            "g (uint64[2,5] x) => (uint64[2,3] values, int64[2,3] indices) <int64[1] k = {3}>"
            " { values, indices = TopK <axis = 1> (x, k) }",
        ),
        "onnx",
        {"x": np.array([[1, 2**63 + 5, 7, 2**64 - 1, 0], [9, 8, 7, 2**40, 3]], dtype=np.uint64)},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_reference(name):
    text, reference, given = CASES[name]
    check(text, reference=reference, rtol=1e-4, atol=1e-5, **given)


INF = np.inf
EXTREMES = np.array(
    [[-INF, -INF, -INF, -INF], [1, -INF, 2, 3], [INF, INF, INF, INF], [2, INF, -INF, 2]],
    np.float32,
)
EXTREME_CASES = {
    "reduce_max_and_min_of_infinities": (
        _text(
            18,
            "g (float[4,4] x) => (float[4,1] hi, float[4] lo) <int64[1] axes = {1}>"
            " { hi = ReduceMax (x, axes) lo = ReduceMin <keepdims = 0> (x, axes) }",
        ),
        "onnxruntime",
        {"x": EXTREMES},
    ),
    "reduce_max_float16_of_negative_infinities": (
        _text(
            13,
            "g (float16[2,4] x) => (float16[2,1] y) { y = ReduceMax <axes = [-1]> (x) }",
        ),
        "onnxruntime",
        {"x": EXTREMES[:2]},
    ),
    "argmax_and_argmin_of_infinities": (
        _text(
            13,
            "g (float[4,4] x) => (int64[4,1] a, int64[4] b, int64[4,1] c, int64[1,4] d)"
            " { a = ArgMax <axis = 1> (x) b = ArgMin <axis = -1, keepdims = 0> (x)"
            " c = ArgMax <axis = 1, select_last_index = 1> (x)"
            " d = ArgMin <axis = 0, select_last_index = 1> (x) }",
        ),
        "onnxruntime",
        {"x": EXTREMES},
    ),
    "argmax_and_argmin_with_nan_and_ties": (
        _text(
            13,
            "g (float[3,4] x) => (int64[3] a, int64[3] b, int64[3] c)"
            " { a = ArgMax <axis = 1, keepdims = 0> (x) b = ArgMin <axis = 1, keepdims = 0> (x)"
            " c = ArgMax <axis = 1, keepdims = 0, select_last_index = 1> (x) }",
        ),
        "onnx",  # numpy's argmax/argmin: the first NaN
        {"x": [[1, np.nan, 5, np.nan], [3, 7, 7, -1], [-3.4028235e38, -INF, -3.4028235e38, -INF]]},
    ),
    "argmax_of_int8_minimums": (
        _text(13, "g (int8[2,3] x) => (int64[2,1] a) { a = ArgMax <axis = 1> (x) }"),
        "onnxruntime",
        {"x": [[-128, -128, -128], [5, -128, 5]]},
    ),
}


@pytest.mark.parametrize("name", list(EXTREME_CASES))
def test_extremes_of_infinities_match_reference(name):
    """TVM reduces max/min from the lowest/highest *finite* value: ReduceMax of a row of -inf
    was -3.4e38 (fully masked attention rows then came out NaN) and ArgMax of it -1."""
    text, reference, given = EXTREME_CASES[name]
    check(text, reference=reference, rtol=0, atol=0, **given)
