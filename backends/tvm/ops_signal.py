"""Signal-processing ONNX ops for TVM's Relax importer (which has none of them).

* ``DFT`` (opset 17 and 20) and ``STFT``: a DFT of static length is a linear map, so it is a
  matmul of the signal (real, or interleaved real/imaginary pairs) by a constant real matrix
  built in float64 from ``exp(∓2πi·k·n/L)``. Zero padding or truncation to ``dft_length``,
  ``onesided`` outputs, the inverse (``1/L``) and the one-sided inverse (numpy's ``irfft``:
  Hermitian weights 1, 2, …, 2, 1, imaginary parts of the DC and Nyquist bins ignored) are all
  rows or columns of that matrix. Cost ``O(L²)`` per transform instead of an FFT's
  ``O(L log L)`` — fine for the window sizes of audio front ends (L ≤ a few thousand).
* ``HannWindow``, ``HammingWindow``, ``BlackmanWindow``, ``MelWeightMatrix``: functions of
  constant sizes and rates, evaluated at import time by onnx's reference implementation.

Preconditions: static shapes; ``dft_length``, ``axis``, ``frame_step`` and ``frame_length`` are
constants (as exporters write them).
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from backends.tvm.ops_common import (
    constant,
    constant_op,
    dtype_of,
    fail,
    input_at,
    np_dtype,
    static_shape,
)

__all__ = ["CONVERTERS", "dft_matrix"]


def dft_matrix(
    n_in: int, channels: int, length: int, *, inverse: bool, onesided: bool
) -> tuple[np.ndarray, int, int]:
    """The real matrix of a DFT of ``length`` points, and the output's bins and channels.

    Rows: the input's ``n_in`` samples × ``channels`` (1: real, 2: real/imaginary
    interleaved); samples past ``length`` get zero rows (truncation), missing ones are zeros
    (padding). Columns: output bins × output channels (2, or 1 for the one-sided inverse, whose
    output is real).
    """
    if inverse and onesided:
        # numpy.fft.irfft: bins 0..length//2 of a Hermitian spectrum; real output.
        bins_in = min(n_in, length // 2 + 1)
        k = np.arange(bins_in)[:, None]
        n = np.arange(length)[None, :]
        angle = 2 * np.pi * k * n / length
        weight = np.full((bins_in, 1), 2.0)
        weight[0] = 1.0
        if length % 2 == 0 and bins_in > length // 2:
            weight[length // 2] = 1.0
        real = weight * np.cos(angle) / length
        imag = -weight * np.sin(angle) / length
        imag[0] = 0.0  # the imaginary parts of DC and Nyquist do not contribute
        if length % 2 == 0 and bins_in > length // 2:
            imag[length // 2] = 0.0
        matrix = np.zeros((n_in, channels, length, 1))
        matrix[:bins_in, 0, :, 0] = real
        if channels == 2:
            matrix[:bins_in, 1, :, 0] = imag
        return matrix.reshape(n_in * channels, length), length, 1
    bins = length // 2 + 1 if onesided else length
    used = min(n_in, length)
    n = np.arange(used)[:, None]
    k = np.arange(bins)[None, :]
    angle = 2 * np.pi * ((n * k) % length) / length  # reduced: exact angles for large n·k
    sign = 1.0 if inverse else -1.0
    scale = 1.0 / length if inverse else 1.0
    cos, sin = np.cos(angle) * scale, sign * np.sin(angle) * scale
    matrix = np.zeros((n_in, channels, bins, 2))
    # (re + i·im)(cos + i·sin) = (re·cos − im·sin) + i(re·sin + im·cos)
    matrix[:used, 0, :, 0] = cos
    matrix[:used, 0, :, 1] = sin
    if channels == 2:
        matrix[:used, 1, :, 0] = -sin
        matrix[:used, 1, :, 1] = cos
    return matrix.reshape(n_in * channels, bins * 2), bins, 2


def _transform(bb, x, axis: int, length: int, *, inverse: bool, onesided: bool, op, attr):
    """The DFT of ``x`` (last axis: 1 or 2 channels) along ``axis``, as a matmul."""
    shape = static_shape(x, op, attr)
    rank = len(shape)
    if not 0 <= axis < rank - 1:
        raise fail(op, attr, f"axis {axis} is not a signal axis of a rank-{rank} input")
    channels = shape[-1]
    if channels not in (1, 2):
        raise fail(op, attr, f"the last dimension must be 1 or 2, got {channels}")
    dtype = dtype_of(x)
    matrix, bins, out_channels = dft_matrix(
        shape[axis], channels, length, inverse=inverse, onesided=onesided
    )
    compute = "float32" if dtype in ("float16", "bfloat16") else dtype
    # Bring the transformed axis next to the channels: [..., n, c] -> [..., n·c].
    outer = [d for d in range(rank - 1) if d != axis]
    order = [*outer, axis, rank - 1]
    moved = relax.op.permute_dims(x, order) if order != list(range(rank)) else x
    if compute != dtype:
        moved = relax.op.astype(moved, compute)
    flat = relax.op.reshape(moved, [*(shape[d] for d in outer), shape[axis] * channels])
    product = relax.op.matmul(flat, relax.const(matrix.astype(np_dtype(compute)), compute))
    result = relax.op.reshape(product, [*(shape[d] for d in outer), bins, out_channels])
    inverse_order = [order.index(d) for d in range(rank)]
    if inverse_order != list(range(rank)):
        result = relax.op.permute_dims(result, inverse_order)
    return bb.normalize(result if compute == dtype else relax.op.astype(result, dtype))


class DFT(OnnxOpConverter):
    """``DFT``: opset 17 (``axis`` attribute, default 1) and 20 (``axis`` input, default -2)."""

    @classmethod
    def _impl_v17(cls, bb, inputs, attr, params):
        return cls._convert(bb, inputs, attr, params, attr.get("axis", 1))

    @classmethod
    def _impl_v20(cls, bb, inputs, attr, params):
        axis = input_at(inputs, 2)
        axis = -2 if axis is None else int(constant(axis, params, "DFT", attr, "axis"))
        return cls._convert(bb, inputs, attr, params, axis)

    @classmethod
    def _convert(cls, bb, inputs, attr, params, axis: int):
        x = inputs[0]
        shape = static_shape(x, "DFT", attr)
        axis = axis % len(shape)
        inverse, onesided = bool(attr.get("inverse", 0)), bool(attr.get("onesided", 0))
        length = input_at(inputs, 1)
        if length is not None:
            length = int(constant(length, params, "DFT", attr, "dft_length"))
        elif inverse and onesided:
            length = 2 * (shape[axis] - 1)
        else:
            length = shape[axis]
        return _transform(
            bb, x, axis, length, inverse=inverse, onesided=onesided, op="DFT", attr=attr
        )


class STFT(OnnxOpConverter):
    """``STFT``: frames ``signal[:, f·step : f·step + frame_length]`` (``1 + (len −
    frame_length) // step`` of them), weighted by ``window`` (default ones), then a DFT of
    ``frame_length`` points along each frame (one-sided by default)."""

    @classmethod
    def _impl_v17(cls, bb, inputs, attr, params):
        signal, window = inputs[0], input_at(inputs, 2)
        step = int(constant(inputs[1], params, "STFT", attr, "frame_step"))
        _, length, _ = static_shape(signal, "STFT", attr)
        frame_length = input_at(inputs, 3)
        if frame_length is not None:
            frame_length = int(constant(frame_length, params, "STFT", attr, "frame_length"))
        elif window is not None:
            frame_length = static_shape(window, "STFT", attr)[0]
        else:
            frame_length = length
        frames = 1 + (length - frame_length) // step
        index = np.arange(frames)[:, None] * step + np.arange(frame_length)[None, :]
        framed = relax.op.take(signal, relax.const(index.astype(np.int64), "int64"), axis=1)
        if window is not None:  # [batch, frames, frame_length, channels] * [frame_length, 1]
            framed = relax.op.multiply(framed, relax.op.reshape(window, [frame_length, 1]))
        framed = bb.normalize(framed)
        onesided = bool(attr.get("onesided", 1))
        return _transform(
            bb, framed, 2, frame_length, inverse=False, onesided=onesided, op="STFT", attr=attr
        )


CONVERTERS: dict[str, type[OnnxOpConverter]] = {
    "DFT": DFT,
    "STFT": STFT,
    "HannWindow": constant_op("HannWindow"),
    "HammingWindow": constant_op("HammingWindow"),
    "BlackmanWindow": constant_op("BlackmanWindow"),
    "MelWeightMatrix": constant_op("MelWeightMatrix"),
}
