"""backends/tvm/ops_detection.py: NonMaxSuppression at its IoU threshold and RoiAlign's max
mode, compiled with TVM and compared with onnxruntime."""

from __future__ import annotations

import onnx
import pytest

from tests.backends.tvm.op_testing import check

pytestmark = pytest.mark.tvm


def _text(opset: int, body: str) -> str:
    return f'<ir_version: {onnx.IR_VERSION}, opset_import: ["" : {opset}]>\n{body}'


CASES = {
    "nms_keeps_iou_equal_to_threshold": (
        _text(
            11,
            "g (float[1,2,4] boxes, float[1,1,2] scores) => (int64[2,3] selected)"
            " <int64[1] top = {3}, float[1] iou = {0.14285715}, float[1] low = {0.0}>"
            " { selected = NonMaxSuppression (boxes, scores, top, iou, low) }",
        ),
        "onnxruntime",
        {"boxes": [[[0, 0, 1, 1], [0.5, 0.5, 1.5, 1.5]]], "scores": [[[0.9, 0.8]]]},
    ),
    "roi_align_max_mode": (
        _text(
            16,
            "g (float[2,3,8,8] x, float[3,4] rois, int64[3] batch) => (float[3,3,2,3] y)"
            ' { y = RoiAlign <mode = "max", output_height = 2, output_width = 3,'
            " sampling_ratio = 2, spatial_scale = 0.5> (x, rois, batch) }",
        ),
        "onnxruntime",
        {
            "rois": [[0, 0, 14, 14], [2, 4, 9, 15], [10, 10, 20, 20]],
            "batch": [0, 1, 1],
        },
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_reference(name):
    text, reference, given = CASES[name]
    check(text, reference=reference, rtol=1e-4, atol=1e-5, **given)
