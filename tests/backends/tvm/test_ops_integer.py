"""backends/tvm/ops_integer.py: QLinearMatMul, QLinearConv, ConvInteger, compiled with TVM and
compared with onnxruntime bit for bit."""

from __future__ import annotations

import onnx
import pytest

from tests.backends.tvm.op_testing import check

pytestmark = pytest.mark.tvm


def _text(opset: int, body: str) -> str:
    return f'<ir_version: {onnx.IR_VERSION}, opset_import: ["" : {opset}]>\n{body}'


CASES = {
    "qlinear_matmul_per_column_weight": _text(
        10,
        "g (uint8[3,4] a, uint8[4,5] b) => (uint8[3,5] y)"
        " <float sa = {0.05}, uint8 za = {7}, float[5] sb = {0.02, 0.03, 0.01, 0.04, 0.05},"
        " uint8[5] zb = {0, 1, 2, 3, 0}, float sy = {0.03}, uint8 zy = {3}>"
        " { y = QLinearMatMul (a, sa, za, b, sb, zb, sy, zy) }",
    ),
    "qlinear_conv_per_channel_with_bias": _text(
        10,
        "g (uint8[1,2,5,5] x, uint8[3,2,3,3] w) => (uint8[1,3,3,3] y)"
        " <float sx = {0.02}, uint8 zx = {8}, float[3] sw = {0.05, 0.1, 0.07},"
        " uint8[3] zw = {3, 5, 0}, float sy = {0.2}, uint8 zy = {100}, int32[3] b = {5, -20, 40}>"
        " { y = QLinearConv <pads = [0, 0, 0, 0]> (x, sx, zx, w, sw, zw, sy, zy, b) }",
    ),
    "conv_integer_padded": _text(
        10,
        "g (uint8[1,1,4,4] x, uint8[2,1,2,2] w) => (int32[1,2,5,5] y) <uint8 zx = {3}>"
        " { y = ConvInteger <pads = [1, 1, 1, 1]> (x, w, zx) }",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_onnxruntime(name):
    check(CASES[name])
