"""backends/tvm/ops_spatial.py: image ops TVM's importer lacks or gets wrong, compiled with TVM
and compared with onnxruntime (onnx's reference where onnxruntime lacks the op or opset)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.backends.tvm.op_testing import check

pytestmark = pytest.mark.tvm


def _text(opset: int, body: str) -> str:
    return f'<ir_version: {onnx.IR_VERSION}, opset_import: ["" : {opset}]>\n{body}'


CASES = {
    "center_crop_pad_crop_one_axis_pad_another": (
        _text(
            18,
            "g (float[7,4,3] x) => (float[4,7,3] y) <int64[2] shape = {4, 7}>"
            " { y = CenterCropPad <axes = [0, 1]> (x, shape) }",
        ),
        "onnxruntime",
        {},
    ),
    "col2im_strided_padded_dilated": (
        _text(
            18,
            "g (float[2,8,15] x) => (float[2,2,5,6] y)"
            " <int64[2] image = {5, 6}, int64[2] block = {2, 2}>"
            " { y = Col2Im <strides = [2, 1], pads = [1, 0, 0, 1], dilations = [1, 2]>"
            " (x, image, block) }",
        ),
        "onnxruntime",
        {},
    ),
    "deform_conv_groups_mask_bias": (
        _text(
            19,
            "g (float[1,4,5,5] x, float[2,2,3,3] w, float[1,36,3,3] offset, float[2] b,"
            " float[1,18,3,3] mask) => (float[1,2,3,3] y) { y = DeformConv <group = 2,"
            " offset_group = 2, kernel_shape = [3, 3]> (x, w, offset, b, mask) }",
        ),
        "onnx",
        {},
    ),
    "max_pool_with_indices_padded_strided": (
        _text(
            12,
            "g (float[2,3,6,5] x) => (float[2,3,3,3] y, int64[2,3,3,3] i)"
            " { y, i = MaxPool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]>"
            " (x) }",
        ),
        "onnxruntime",
        {},
    ),
    "max_pool_indices_column_major": (
        _text(
            12,
            "g (float[1,2,4,5] x) => (float[1,2,2,2] y, int64[1,2,2,2] i)"
            " { y, i = MaxPool <kernel_shape = [2, 2], strides = [2, 2], storage_order = 1>"
            " (x) }",
        ),
        "onnxruntime",
        {},
    ),
    # onnx's reference (and the ONNX node test) scatter into MaxPool's input shape and pad at
    # the end; onnxruntime scatters flat indices into output_shape's planes (as PyTorch).
    "max_unpool_to_a_larger_output_shape": (
        _text(
            11,
            "g (float[1,1,2,2] x, int64[1,1,2,2] i) => (float[1,1,5,5] y)"
            " <int64[4] shape = {1, 1, 5, 5}>"
            " { y = MaxUnpool <kernel_shape = [2, 2], strides = [2, 2]> (x, i, shape) }",
        ),
        "onnx",
        {"i": [[[[0, 3], [9, 14]]]]},
    ),
    "upsample_nearest_scales_input": (
        _text(
            9,
            "g (float[1,2,2,3] x) => (float[1,2,4,7] y) <float[4] scales = {1.0, 1.0, 2.0, 2.5}>"
            ' { y = Upsample <mode = "nearest"> (x, scales) }',
        ),
        "onnxruntime",
        {},
    ),
    "conv_transpose_output_shape_larger_than_full": (
        _text(
            11,
            "g (float[1,1,3,3] x, float[1,2,3,3] w) => (float[1,2,10,8] y)"
            " { y = ConvTranspose <strides = [3, 2], output_shape = [10, 8]> (x, w) }",
        ),
        "onnx",
        {},
    ),
    "space_to_depth_crd": (
        _text(
            28,
            "g (float[1,2,4,6] x) => (float[1,8,2,3] y)"
            ' { y = SpaceToDepth <blocksize = 2, mode = "CRD"> (x) }',
        ),
        "onnx",
        {},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_reference(name):
    text, reference, given = CASES[name]
    if name.startswith("max_unpool"):
        given = {**given, "x": np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)}
    check(text, reference=reference, rtol=1e-4, atol=1e-5, **given)
