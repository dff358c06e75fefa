"""Detection ONNX ops that TVM's Relax importer converts differently from onnxruntime:
NonMaxSuppression at its threshold, RoiAlign's max mode."""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from backends.tvm.ops_common import (
    constant,
    dtype_of,
    input_at,
    is_constant,
    static_shape,
    string_attr,
)

__all__ = ["CONVERTERS"]


class NonMaxSuppression(onnx_frontend.NonMaxSuppression):
    """``NonMaxSuppression`` that keeps a box whose IoU equals ``iou_threshold`` exactly.

    ONNX suppresses when ``IoU > threshold``; TVM's kernel when ``IoU >= threshold``. Giving TVM
    the next float32 above a constant threshold makes the two agree for every float32 IoU.
    """

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        threshold = input_at(inputs, 3)
        if threshold is not None and is_constant(threshold):
            value = np.float32(
                constant(threshold, params, "NonMaxSuppression", attr, "iou_threshold").item()
            )
            nudged = np.nextafter(value, np.float32(np.inf), dtype=np.float32)
            inputs = [*inputs[:3], relax.const(nudged, "float32"), *inputs[4:]]
        return super()._impl_v10(bb, inputs, attr, params)


class RoiAlign(onnx_frontend.RoiAlign):
    """``RoiAlign`` in ``max`` mode with a fixed ``sampling_ratio``, as onnxruntime defines it.

    onnxruntime's (and onnx's reference) max mode takes, over the bin's sampling points, the
    largest *weighted corner* ``w_k · X[corner_k]`` of each bilinear interpolation, not the
    largest interpolated value (TVM's). Ours is a tensor-expression kernel following the
    reference: sample ``y = roi_y0 + ph·bin_h + (iy + ½)·bin_h / grid`` (likewise x), zero
    outside ``[-1, H] × [-1, W]``, clamped to the last row/column at the border. ``avg`` mode,
    and an adaptive grid (``sampling_ratio=0``, whose size depends on each ROI), go to TVM.
    """

    @classmethod
    def _impl(cls, bb, inputs, attr, params, default_coordinate_transformation_mode):
        mode = string_attr(attr, "mode", "avg")
        ratio = attr.get("sampling_ratio", 0)
        if mode != "max" or ratio <= 0:
            return super()._impl(bb, inputs, attr, params, default_coordinate_transformation_mode)
        x, rois, batch_indices = inputs[0], inputs[1], inputs[2]
        _, channels, height, width = static_shape(x, "RoiAlign", attr)
        count = static_shape(rois, "RoiAlign", attr)[0]
        out_h, out_w = attr.get("output_height", 1), attr.get("output_width", 1)
        scale = attr.get("spatial_scale", 1.0)
        transform = attr.get(
            "coordinate_transformation_mode", default_coordinate_transformation_mode
        )
        half_pixel = (transform.decode() if isinstance(transform, bytes) else transform) == (
            "half_pixel"
        )
        dtype = dtype_of(x)

        def compute(data, boxes, batches):
            grid_y = te.reduce_axis((0, ratio), "iy")
            grid_x = te.reduce_axis((0, ratio), "ix")

            def value(r, c, ph, pw):
                offset = 0.5 if half_pixel else 0.0
                start_x = boxes[r, 0] * scale - offset
                start_y = boxes[r, 1] * scale - offset
                roi_w = boxes[r, 2] * scale - offset - start_x
                roi_h = boxes[r, 3] * scale - offset - start_y
                if not half_pixel:  # malformed ROIs forced to 1×1
                    roi_w, roi_h = tirx.max(roi_w, 1.0), tirx.max(roi_h, 1.0)
                bin_h, bin_w = roi_h / out_h, roi_w / out_w
                y = start_y + ph * bin_h + (grid_y + 0.5) * bin_h / ratio
                x_ = start_x + pw * bin_w + (grid_x + 0.5) * bin_w / ratio
                outside = tirx.any(y < -1.0, y > height, x_ < -1.0, x_ > width)
                y, x_ = tirx.max(y, 0.0), tirx.max(x_, 0.0)
                y_low, x_low = te.floor(y).astype("int64"), te.floor(x_).astype("int64")
                y_edge, x_edge = y_low >= height - 1, x_low >= width - 1
                y_low = tirx.if_then_else(y_edge, tirx.const(height - 1, "int64"), y_low)
                x_low = tirx.if_then_else(x_edge, tirx.const(width - 1, "int64"), x_low)
                y_high = tirx.if_then_else(y_edge, y_low, y_low + 1)
                x_high = tirx.if_then_else(x_edge, x_low, x_low + 1)
                ly = tirx.if_then_else(y_edge, tirx.const(0.0, dtype), y - y_low.astype(dtype))
                lx = tirx.if_then_else(x_edge, tirx.const(0.0, dtype), x_ - x_low.astype(dtype))
                hy, hx = 1.0 - ly, 1.0 - lx
                n = batches[r]
                corners = (
                    (hy * hx, y_low, x_low),
                    (hy * lx, y_low, x_high),
                    (ly * hx, y_high, x_low),
                    (ly * lx, y_high, x_high),
                )
                best = None
                for weight, row, col in corners:
                    term = weight * data[n, c, row, col]
                    best = term if best is None else tirx.max(best, term)
                sample = tirx.if_then_else(outside, tirx.const(0.0, dtype), best)
                return te.max(sample, axis=[grid_y, grid_x])

            return te.compute((count, channels, out_h, out_w), value, "roi_align_max")

        return bb.emit_te(compute, x, rois, batch_indices)


CONVERTERS: dict[str, type[OnnxOpConverter]] = {
    "NonMaxSuppression": NonMaxSuppression,
    "RoiAlign": RoiAlign,
}
