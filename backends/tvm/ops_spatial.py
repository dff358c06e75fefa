"""Spatial (image) ONNX ops TVM's Relax importer lacks or converts wrongly.

* ``Col2Im``, ``DeformConv``, ``CenterCropPad``: missing in TVM. Col2Im and DeformConv's
  bilinear sampling are tensor-expression kernels (``bb.emit_te``); DeformConv's weighted sum
  is a grouped matmul; CenterCropPad is a slice and a pad.
* ``MaxPool`` with its ``Indices`` output, ``MaxUnpool`` with ``output_shape``, ``Upsample``
  (opset 9: scales as an input), ``ConvTranspose`` with ``output_shape``, ``SpaceToDepth`` in
  ``CRD`` mode: TVM's converters refuse or ignore these forms; each class says how.

Preconditions: static shapes; sizes, scales and shapes given as constants.
"""

from __future__ import annotations

import functools

import numpy as np
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from backends.tvm.ops_common import (
    constant,
    dtype_of,
    fail,
    input_at,
    num_outputs,
    rank_of,
    static_shape,
    string_attr,
)

__all__ = ["CONVERTERS"]


def _product(values) -> int:
    return functools.reduce(lambda a, b: a * b, values, 1)


def _flat_index(indices, extents):
    """Row-major flat index of ``indices`` in a box of ``extents`` (TIR expressions)."""
    flat = indices[0]
    for index, extent in zip(indices[1:], extents[1:], strict=True):
        flat = flat * extent + index
    return flat


def _window(bb, x, begins: list[int], sizes: list[int]):
    """``x[begin : begin + size]`` per axis, zeros where the window leaves ``x``."""
    shape = [int(d) for d in x.ty.shape]
    before = [max(0, -b) for b in begins]
    after = [max(0, b + s - d) for b, s, d in zip(begins, sizes, shape, strict=True)]
    if any(before) or any(after):
        widths = [w for pair in zip(before, after, strict=True) for w in pair]
        x = bb.normalize(relax.op.nn.pad(x, widths))
    starts = [b + p for b, p in zip(begins, before, strict=True)]
    axes = list(range(len(shape)))
    ends = [s + n for s, n in zip(starts, sizes, strict=True)]
    if starts == [0] * len(shape) and ends == [int(d) for d in x.ty.shape]:
        return x
    return bb.normalize(relax.op.strided_slice(x, axes, starts, ends))


class CenterCropPad(OnnxOpConverter):
    """``CenterCropPad`` (opset 18): each axis in ``axes`` cropped or zero-padded to ``shape``,
    centered (the odd extra element cropped from, or padded at, the end)."""

    @classmethod
    def _impl_v18(cls, bb, inputs, attr, params):
        x = inputs[0]
        shape = static_shape(x, "CenterCropPad", attr)
        target = constant(inputs[1], params, "CenterCropPad", attr, "shape").reshape(-1)
        axes = attr.get("axes", range(len(shape)))
        begins, sizes = [0] * len(shape), list(shape)
        for axis, size in zip(axes, target.tolist(), strict=True):
            axis = axis + len(shape) if axis < 0 else axis
            # Cropping starts (d − size) // 2 in; padding puts (size − d) // 2 zeros in front.
            begins[axis] = (
                (shape[axis] - size) // 2 if size < shape[axis] else -((size - shape[axis]) // 2)
            )
            sizes[axis] = size
        return _window(bb, x, begins, sizes)


class Col2Im(OnnxOpConverter):
    """``Col2Im`` (opset 18): sums sliding blocks back into an image (the inverse of im2col).

    Input ``[N, C·Πk, L]`` (L blocks), output ``[N, C, *image_shape]``:
    ``out[n, c, p] = Σ_κ in[n, c·Πk + flat(κ), flat(b)]`` over kernel offsets κ whose block
    ``b_d = (p_d + pad_d − κ_d·dil_d) / stride_d`` is a whole number inside the block grid.
    """

    @classmethod
    def _impl_v18(cls, bb, inputs, attr, params):
        x = inputs[0]
        image = constant(inputs[1], params, "Col2Im", attr, "image_shape").reshape(-1).tolist()
        block = constant(inputs[2], params, "Col2Im", attr, "block_shape").reshape(-1).tolist()
        dims = len(image)
        dilations = list(attr.get("dilations", [1] * dims))
        strides = list(attr.get("strides", [1] * dims))
        pads = list(attr.get("pads", [0] * 2 * dims))
        batch, columns, _ = static_shape(x, "Col2Im", attr)
        channels = columns // _product(block)
        blocks = [
            (image[d] + pads[d] + pads[d + dims] - dilations[d] * (block[d] - 1) - 1) // strides[d]
            + 1
            for d in range(dims)
        ]

        def compute(data):
            kernel = [te.reduce_axis((0, block[d]), f"k{d}") for d in range(dims)]

            def value(n, c, *pixel):
                positions = [pixel[d] + pads[d] - kernel[d] * dilations[d] for d in range(dims)]
                valid = tirx.const(True, "bool")
                for d, position in enumerate(positions):
                    valid = tirx.all(
                        valid,
                        position >= 0,
                        tirx.floormod(position, strides[d]) == 0,
                        tirx.floordiv(position, strides[d]) < blocks[d],
                    )
                index = [
                    tirx.max(tirx.min(tirx.floordiv(p, s), b - 1), 0)
                    for p, s, b in zip(positions, strides, blocks, strict=True)
                ]
                column = c * _product(block) + _flat_index(list(kernel), block)
                load = data[n, column, _flat_index(index, blocks)]
                return te.sum(tirx.if_then_else(valid, load, tirx.const(0, data.dtype)), kernel)

            return te.compute((batch, channels, *image), value, "col2im")

        return bb.emit_te(compute, x)


class DeformConv(OnnxOpConverter):
    """``DeformConv`` (opset 19), 2-D: a convolution whose taps sample X at learned offsets.

    Each tap ``(kh, kw)`` of output ``(oh, ow)`` reads X at ``(oh·s − p + kh·d + Δh,
    ow·s − p + kw·d + Δw)`` by bilinear interpolation (zeros outside X), times the optional
    ``mask``; offsets and masks are shared by the channels of an offset group. The sampled
    columns ``[N, C, kh, kw, oh, ow]`` (a tensor-expression kernel) are then contracted with W
    per group (a batched matmul), plus the bias.
    """

    @classmethod
    def _impl_v19(cls, bb, inputs, attr, params):
        x, w, offset, bias, mask = (input_at(inputs, i) for i in range(5))
        if rank_of(x) != 4:
            raise fail("DeformConv", attr, "only 2-D inputs (N, C, H, W) are supported")
        batch, channels, height, width = static_shape(x, "DeformConv", attr)
        out_channels, group_channels, kh, kw = static_shape(w, "DeformConv", attr)
        _, _, out_h, out_w = static_shape(offset, "DeformConv", attr)
        sh, sw = attr.get("strides", [1, 1])
        dh, dw = attr.get("dilations", [1, 1])
        ph, pw = list(attr.get("pads", [0, 0, 0, 0]))[:2]
        group, offset_groups = attr.get("group", 1), attr.get("offset_group", 1)
        per_offset_group = channels // offset_groups
        dtype = dtype_of(x)
        offset = bb.normalize(
            relax.op.reshape(offset, [batch, offset_groups, kh, kw, 2, out_h, out_w])
        )
        arguments = [x, offset]
        if mask is not None:
            arguments.append(
                bb.normalize(relax.op.reshape(mask, [batch, offset_groups, kh, kw, out_h, out_w]))
            )

        def compute(data, shifts, *weights):
            def sample(n, c, i, j, oh, ow):
                g = tirx.floordiv(c, per_offset_group)
                y = (oh * sh - ph + i * dh).astype(dtype) + shifts[n, g, i, j, 0, oh, ow]
                x_ = (ow * sw - pw + j * dw).astype(dtype) + shifts[n, g, i, j, 1, oh, ow]
                y0, x0 = te.floor(y), te.floor(x_)
                total = tirx.const(0, dtype)
                for corner_y, weight_y in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                    for corner_x, weight_x in ((x0, 1 - (x_ - x0)), (x0 + 1, x_ - x0)):
                        row, col = corner_y.astype("int64"), corner_x.astype("int64")
                        inside = tirx.all(row >= 0, row < height, col >= 0, col < width)
                        load = data[
                            n,
                            c,
                            tirx.max(tirx.min(row, height - 1), 0),
                            tirx.max(tirx.min(col, width - 1), 0),
                        ]
                        value = tirx.if_then_else(inside, load, tirx.const(0, dtype))
                        total = total + weight_y * weight_x * value
                if weights:
                    total = total * weights[0][n, g, i, j, oh, ow]
                return total

            return te.compute((batch, channels, kh, kw, out_h, out_w), sample, "deform_sample")

        columns = bb.emit_te(compute, *arguments)
        taps = (channels // group) * kh * kw
        columns = relax.op.reshape(columns, [batch, group, taps, out_h * out_w])
        weights = relax.op.reshape(w, [group, out_channels // group, group_channels * kh * kw])
        product = relax.op.matmul(weights, columns)  # [batch, group, oc/group, oh·ow]
        y = relax.op.reshape(product, [batch, out_channels, out_h, out_w])
        if bias is not None:
            y = relax.op.add(y, relax.op.reshape(bias, [1, out_channels, 1, 1]))
        return y


def _pool_begin_pads(attr, shape, out_shape, kernel, strides, dilations) -> list[int]:
    """The padding before each spatial axis of a pool, ``auto_pad`` resolved."""
    dims = len(kernel)
    auto_pad = string_attr(attr, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins = []
        for d in range(dims):
            total = max(
                (out_shape[d] - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - shape[d], 0
            )
            begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        return begins
    if auto_pad == "VALID":
        return [0] * dims
    return list(attr.get("pads", [0] * 2 * dims))[:dims]


class MaxPool(onnx_frontend.MaxPool):
    """``MaxPool`` with its second output, ``Indices``: TVM's converter returns the values only.

    Values come from TVM's converter; each index is the smallest flat index (first in
    row-major window order, as onnxruntime picks) of an in-bounds window element equal to the
    maximum, over the whole ``N·C·spatial`` tensor; ``storage_order=1`` numbers the spatial
    dims column-major.
    """

    @classmethod
    def get_converter(cls, opset):
        convert = onnx_frontend.MaxPool.get_converter(opset)

        def max_pool(bb, inputs, attr, params):
            if num_outputs(attr) == 1:
                return convert(bb, inputs, attr, params)
            values = bb.normalize(convert(bb, inputs, dict(attr), params))
            return relax.Tuple([values, cls._indices(bb, inputs[0], values, attr)])

        return max_pool

    @staticmethod
    def _indices(bb, x, values, attr):
        shape = static_shape(x, "MaxPool", attr)
        out_shape = static_shape(values, "MaxPool", attr)
        spatial, out_spatial = shape[2:], out_shape[2:]
        dims = len(spatial)
        kernel = list(attr["kernel_shape"])
        strides = list(attr.get("strides", [1] * dims))
        dilations = list(attr.get("dilations", [1] * dims))
        begins = _pool_begin_pads(attr, spatial, out_spatial, kernel, strides, dilations)
        column_major = attr.get("storage_order", 0) == 1
        largest = tirx.const(np.iinfo(np.int64).max, "int64")

        def compute(data, maxima):
            window = [te.reduce_axis((0, kernel[d]), f"k{d}") for d in range(dims)]

            def index(n, c, *out):
                positions = [
                    out[d] * strides[d] - begins[d] + window[d] * dilations[d] for d in range(dims)
                ]
                inside = tirx.all(
                    *[p >= 0 for p in positions], *[p < spatial[d] for d, p in enumerate(positions)]
                )
                clamped = [
                    tirx.max(tirx.min(p, spatial[d] - 1), 0) for d, p in enumerate(positions)
                ]
                if column_major:
                    flat = _flat_index(list(reversed(clamped)), list(reversed(spatial)))
                else:
                    flat = _flat_index(clamped, spatial)
                flat = (n * shape[1] + c) * _product(spatial) + flat
                hit = data[(n, c, *clamped)] == maxima[(n, c, *out)]
                chosen = tirx.if_then_else(tirx.all(inside, hit), flat.astype("int64"), largest)
                return te.min(chosen, window)

            return te.compute(out_shape, index, "max_pool_indices")

        return bb.emit_te(compute, x, values)


class MaxUnpool(onnx_frontend.MaxUnpool):
    """``MaxUnpool`` with a constant ``output_shape`` (TVM's converter calls ``.tolist()`` on
    the Relax constant).

    As onnx's reference: X is scattered by its flat indices into the shape MaxPool had
    (``(in − 1)·stride − pads + kernel`` per axis), which is then zero-extended at the end to
    ``output_shape`` (the ONNX node test agrees; onnxruntime instead reads the indices as flat
    positions in ``output_shape``'s planes, as PyTorch does).
    """

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        output_shape = input_at(inputs, 2)
        if output_shape is None:
            return super()._impl_v9(bb, inputs, attr, params)
        shape = constant(output_shape, params, "MaxUnpool", attr, "output_shape").reshape(-1)
        data, indices = inputs[0], inputs[1]
        in_shape = static_shape(data, "MaxUnpool", attr)
        kernel = list(attr["kernel_shape"])
        dims = len(kernel)
        strides = list(attr.get("strides", [1] * dims))
        pads = list(attr.get("pads", [0] * 2 * dims))
        pooled = in_shape[:2] + [
            (in_shape[d + 2] - 1) * strides[d] - (pads[d] + pads[d + dims]) + kernel[d]
            for d in range(dims)
        ]
        flat = relax.op.scatter_elements(
            relax.op.zeros([_product(pooled)], dtype_of(data)),
            relax.op.reshape(indices, [-1]),
            relax.op.reshape(data, [-1]),
            axis=0,
        )
        unpooled = bb.normalize(relax.op.reshape(flat, pooled))
        return _window(bb, unpooled, [0] * len(pooled), [int(d) for d in shape])


class Upsample(OnnxOpConverter):
    """``Upsample`` (opsets 7–9): ``scales`` an attribute (7) or a constant input (9).

    ``nearest``: ``out[i] = in[floor(i / scale)]`` per axis (a gather). ``linear``: TVM's
    ``resize2d`` (4-D, asymmetric coordinates), the form TVM's own converter handles.
    """

    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        return cls._upsample(bb, inputs[0], list(attr["scales"]), attr)

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        scales = constant(inputs[1], params, "Upsample", attr, "scales").reshape(-1)
        return cls._upsample(bb, inputs[0], scales.tolist(), attr)

    @classmethod
    def _upsample(cls, bb, x, scales: list[float], attr):
        shape = static_shape(x, "Upsample", attr)
        out_shape = [int(np.floor(d * s)) for d, s in zip(shape, scales, strict=True)]
        mode = string_attr(attr, "mode", "nearest")
        if mode == "nearest":
            for axis, (size, out) in enumerate(zip(shape, out_shape, strict=True)):
                if size == out:
                    continue
                source = np.minimum(np.floor(np.arange(out) / scales[axis]), size - 1)
                x = bb.normalize(relax.op.take(x, relax.const(source.astype(np.int64)), axis))
            return x
        if mode == "linear" and len(shape) == 4 and scales[:2] == [1.0, 1.0]:
            return relax.op.image.resize2d(
                x,
                relax.ShapeExpr(out_shape[2:]),
                layout="NCHW",
                method="linear",
                coordinate_transformation_mode="asymmetric",
            )
        raise fail("Upsample", attr, f"mode {mode!r} with scales {scales} is not supported")


class ConvTranspose(onnx_frontend.ConvTranspose):
    """``ConvTranspose`` with ``output_shape`` (TVM ignores it).

    The full transposed convolution (no padding, no output padding) is computed, then the
    output window is cut from it, zero-filled where it extends past the end, as onnx's
    reference does: without ``auto_pad`` the window starts at 0; with ``SAME_UPPER`` /
    ``SAME_LOWER`` it starts at ``total_padding // 2`` / ``total_padding − total_padding //
    2``, ``total_padding = stride·(in − 1) + output_padding + (k − 1)·dilation + 1 − out``.
    The bias is added to the whole window.
    """

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        if "output_shape" not in attr:
            return super()._impl_v1(bb, inputs, attr, params)
        x, w, bias = inputs[0], inputs[1], input_at(inputs, 2)
        out_spatial = list(attr["output_shape"])[-(rank_of(x) - 2) :]
        dims = len(out_spatial)
        full_attr = {
            k: v
            for k, v in attr.items()
            if k not in ("output_shape", "pads", "auto_pad", "output_padding")
        }
        full = bb.normalize(super()._impl_v1(bb, [x, w, None], full_attr, params))
        in_spatial = static_shape(x, "ConvTranspose", attr)[2:]
        kernel = list(attr.get("kernel_shape", static_shape(w, "ConvTranspose", attr)[2:]))
        strides = list(attr.get("strides", [1] * dims))
        dilations = list(attr.get("dilations", [1] * dims))
        output_padding = list(attr.get("output_padding", [0] * dims))
        auto_pad = string_attr(attr, "auto_pad", "NOTSET")
        begins = []
        for d in range(dims):
            total = (
                strides[d] * (in_spatial[d] - 1)
                + output_padding[d]
                + (kernel[d] - 1) * dilations[d]
                + 1
                - out_spatial[d]
            )
            if auto_pad == "SAME_UPPER":
                begins.append(total // 2)
            elif auto_pad == "SAME_LOWER":
                begins.append(total - total // 2)
            else:
                begins.append(0)
        batch, channels = static_shape(full, "ConvTranspose", attr)[:2]
        y = _window(bb, full, [0, 0, *begins], [batch, channels, *out_spatial])
        if bias is not None:
            y = relax.op.add(y, relax.op.reshape(bias, [1, -1] + [1] * dims))
        return y


class SpaceToDepth(onnx_frontend.SpaceToDepth):
    """``SpaceToDepth`` with ``mode="CRD"`` (opset 28): output channel ``c·b² + by·b + bx``
    (TVM's converter always orders ``DCR``: ``(by·b + bx)·C + c``)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        if string_attr(attr, "mode", "DCR") != "CRD":
            return super()._impl_v1(bb, inputs, attr, params)
        size = int(attr["blocksize"])
        b, c, h, w = static_shape(inputs[0], "SpaceToDepth", attr)
        x = relax.op.reshape(inputs[0], (b, c, h // size, size, w // size, size))
        x = relax.op.permute_dims(x, [0, 1, 3, 5, 2, 4])
        return relax.op.reshape(x, (b, c * size * size, h // size, w // size))


CONVERTERS: dict[str, type[OnnxOpConverter]] = {
    "CenterCropPad": CenterCropPad,
    "Col2Im": Col2Im,
    "DeformConv": DeformConv,
    "MaxPool": MaxPool,
    "MaxUnpool": MaxUnpool,
    "Upsample": Upsample,
    "ConvTranspose": ConvTranspose,
    "SpaceToDepth": SpaceToDepth,
}
