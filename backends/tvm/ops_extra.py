"""Standard ONNX ops TVM 0.27's Relax importer lacks or converts wrongly.

Found by ``tools/conformance.py`` (the ONNX backend node tests); each converter's docstring says
what TVM gets wrong or lacks. This module holds the elementwise ops (BitCast, Pow, Mod,
BitShift, IsInf, Elu, Celu, Swish, SwiGLU) and EyeLike, Dropout, OptionalHasElement, Unsqueeze;
the rest live by topic: :mod:`~backends.tvm.ops_reduce` (reductions, scans, Det, TopK, BatchNorm
training), :mod:`~backends.tvm.ops_indexing` (ReverseSequence, TensorScatter, TfIdfVectorizer,
Split), :mod:`~backends.tvm.ops_signal` (DFT, STFT, windows, mel filters),
:mod:`~backends.tvm.ops_spatial` (Col2Im, DeformConv, CenterCropPad, pooling, ConvTranspose,
Upsample, SpaceToDepth), :mod:`~backends.tvm.ops_detection` (NonMaxSuppression, RoiAlign) and
:mod:`~backends.tvm.ops_integer` (QLinearMatMul, QLinearConv, ConvInteger). :data:`CONVERTERS`
collects them all; :mod:`backends.tvm.converters` merges it into the importer's table.

Numerics follow onnx's reference implementation (``onnx.reference.ops``).
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter, get_type

from backends.tvm.ops_common import (
    constant,
    downcast,
    dtype_of,
    fail,
    input_at,
    is_constant,
    is_float,
    np_dtype,
    num_outputs,
    scalar,
    static_shape,
    string_attr,
    upcast,
)
from backends.tvm.ops_detection import CONVERTERS as DETECTION_CONVERTERS
from backends.tvm.ops_indexing import CONVERTERS as INDEXING_CONVERTERS
from backends.tvm.ops_integer import CONVERTERS as INTEGER_CONVERTERS
from backends.tvm.ops_reduce import CONVERTERS as REDUCE_CONVERTERS
from backends.tvm.ops_signal import CONVERTERS as SIGNAL_CONVERTERS
from backends.tvm.ops_spatial import CONVERTERS as SPATIAL_CONVERTERS

__all__ = ["CONVERTERS"]

# --- elementwise ------------------------------------------------------------------------------


class BitCast(OnnxOpConverter):
    """``BitCast`` (opset 26): the same bits read as dtype ``to`` of the same width.

    A TIR ``reinterpret`` per element; ``bool`` <-> 8-bit integers is a value cast (ONNX stores
    a bool as one byte holding 0 or 1).
    """

    @classmethod
    def _impl_v26(cls, bb, inputs, attr, params):
        x = inputs[0]
        source, target = dtype_of(x), get_type(attr["to"])
        if np_dtype(source).itemsize != np_dtype(target).itemsize:
            raise fail("BitCast", attr, f"{source} and {target} differ in width")
        if source == target:
            return x
        if "bool" in (source, target):
            return relax.op.astype(x, target)
        return bb.emit_te(
            lambda t: te.compute(t.shape, lambda *i: tirx.reinterpret(target, t(*i)), "bitcast"),
            x,
        )


class Pow(onnx_frontend.Pow):
    """``Pow`` with mixed dtypes: the result has X's dtype (``np.power(x, y).astype(x.dtype)``).

    TVM requires equal dtypes and a float X. A float X raises to Y cast to X's dtype; an integer
    X is computed in float64 and cast back, rounded when Y is an integer (exact while the result
    is below 2**53), truncated when Y is a float (as the reference's ``astype``).
    """

    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        x, y = inputs
        if is_constant(x) and is_constant(y):
            return super()._impl_v7(bb, inputs, attr, params)
        x_dtype, y_dtype = dtype_of(x), dtype_of(y)
        if is_float(x_dtype):
            if y_dtype != x_dtype:
                y = bb.normalize(relax.op.astype(y, x_dtype))
            if x_dtype == "bfloat16":
                return downcast(bb, relax.op.power(upcast(bb, x), upcast(bb, y)), x_dtype)
            return relax.op.power(x, y)
        result = relax.op.power(relax.op.astype(x, "float64"), relax.op.astype(y, "float64"))
        if not is_float(y_dtype):
            result = relax.op.round(result)
        return relax.op.astype(result, x_dtype)


class Mod(onnx_frontend.Mod):
    """``Mod`` of floats with ``fmod=0``: numpy's ``mod`` (the result takes the divisor's sign).

    TVM computes ``x - floor(x / y) * y``, which is NaN for an infinite divisor (numpy: ``x``,
    or ``y`` when the signs differ). Ours: ``r = fmod(x, y)`` (C semantics: exact, sign of
    ``x``, NaN for ``x`` infinite or ``y`` zero), then ``r + y`` where ``r != 0`` and the
    signs of ``r`` and ``y`` differ. Integers and ``fmod=1`` go to TVM.
    """

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x, y = inputs
        dtype = dtype_of(x)
        if attr.get("fmod", 0) == 1 or not is_float(dtype) or (is_constant(x) and is_constant(y)):
            return super()._impl_v10(bb, inputs, attr, params)
        xc, yc = upcast(bb, x), upcast(bb, y)
        zero = scalar(0, dtype_of(xc))
        r = bb.normalize(relax.op.mod(xc, yc))
        differ = relax.op.logical_and(
            relax.op.not_equal(r, zero),
            relax.op.logical_xor(relax.op.less(r, zero), relax.op.less(yc, zero)),
        )
        return downcast(bb, relax.op.where(differ, relax.op.add(r, yc), r), dtype)


class BitShift(OnnxOpConverter):
    """``BitShift`` with shift amounts outside ``[0, bits)``: 0 (``RIGHT`` of a negative: -1).

    LLVM leaves such shifts undefined (TVM's result is garbage); the reference defines them.
    """

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        x, y = inputs
        direction = string_attr(attr, "direction", "LEFT")
        if direction not in ("LEFT", "RIGHT"):
            raise fail("BitShift", attr, f"unknown direction {direction!r}")
        dtype = dtype_of(x)
        bits = np_dtype(dtype).itemsize * 8
        out_of_range = relax.op.logical_or(
            relax.op.less(y, scalar(0, dtype)), relax.op.greater_equal(y, scalar(bits, dtype))
        )
        fill = scalar(0, dtype)
        if direction == "RIGHT" and np.issubdtype(np_dtype(dtype), np.signedinteger):
            fill = relax.op.where(relax.op.less(x, fill), scalar(-1, dtype), fill)
        # Clamp the amount so the shift itself stays defined where it is discarded.
        safe = relax.op.where(out_of_range, scalar(0, dtype), y)
        shifted = (
            relax.op.left_shift(x, safe) if direction == "LEFT" else relax.op.right_shift(x, safe)
        )
        return relax.op.where(out_of_range, fill, shifted)


class IsInf(OnnxOpConverter):
    """``IsInf`` honouring ``detect_positive``/``detect_negative`` (TVM ignores them)."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x = inputs[0]
        positive, negative = attr.get("detect_positive", 1), attr.get("detect_negative", 1)
        inf = relax.op.isinf(x)
        if positive and negative:
            return inf
        if not positive and not negative:
            return relax.op.zeros_like(inf)
        zero = scalar(0, dtype_of(x))
        sign = relax.op.greater(x, zero) if positive else relax.op.less(x, zero)
        return relax.op.logical_and(inf, sign)


class Elu(OnnxOpConverter):
    """``Elu``: ``x`` for ``x > 0``, else ``alpha * (exp(x) - 1)``.

    TVM builds its constants in float32, which float16/bfloat16 inputs refuse (Celu's
    expanded body is ``alpha * Elu(x / alpha)``); half types are computed in float32.
    """

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x = inputs[0]
        dtype = dtype_of(x)
        xc = upcast(bb, x)
        compute = dtype_of(xc)
        negative = relax.op.multiply(
            scalar(attr.get("alpha", 1.0), compute),
            relax.op.subtract(relax.op.exp(xc), scalar(1.0, compute)),
        )
        y = relax.op.where(relax.op.greater(xc, scalar(0.0, compute)), xc, negative)
        return downcast(bb, y, dtype)


class Celu(OnnxOpConverter):
    """``Celu``: ``max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``, half types in float32."""

    @classmethod
    def _impl_v12(cls, bb, inputs, attr, params):
        x = inputs[0]
        dtype = dtype_of(x)
        xc = upcast(bb, x)
        compute = dtype_of(xc)
        alpha = scalar(attr.get("alpha", 1.0), compute)
        zero = scalar(0.0, compute)
        expm1 = relax.op.subtract(relax.op.exp(relax.op.divide(xc, alpha)), scalar(1.0, compute))
        y = relax.op.add(
            relax.op.maximum(xc, zero), relax.op.minimum(zero, relax.op.multiply(alpha, expm1))
        )
        return downcast(bb, y, dtype)


def _swish(bb, x, alpha: float):
    """``x * sigmoid(alpha * x)`` in X's dtype (half types through float32)."""
    xc = upcast(bb, x)
    scaled = xc if alpha == 1.0 else relax.op.multiply(scalar(alpha, dtype_of(xc)), xc)
    return relax.op.multiply(xc, relax.op.sigmoid(scaled))


class Swish(OnnxOpConverter):
    """``Swish`` (opset 24): ``x * sigmoid(alpha * x)``."""

    @classmethod
    def _impl_v24(cls, bb, inputs, attr, params):
        x = inputs[0]
        return downcast(bb, _swish(bb, x, attr.get("alpha", 1.0)), dtype_of(x))


class SwiGLU(OnnxOpConverter):
    """``SwiGLU`` (opset 28): ``Swish_alpha(A) * B``, A and B of one shape."""

    @classmethod
    def _impl_v28(cls, bb, inputs, attr, params):
        a, b = inputs[0], inputs[1]
        dtype = dtype_of(a)
        return downcast(
            bb, relax.op.multiply(_swish(bb, a, attr.get("alpha", 1.0)), upcast(bb, b)), dtype
        )


class EyeLike(OnnxOpConverter):
    """``EyeLike`` with a ``dtype`` attribute other than the input's.

    TVM's converter refuses it, and ``relax.op.eye_like``'s legalization ignores its dtype.
    """

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        x = inputs[0]
        dtype = get_type(attr["dtype"]) if "dtype" in attr else dtype_of(x)
        rows, columns = static_shape(x, "EyeLike", attr)
        return relax.op.eye(rows, columns, attr.get("k", 0), dtype)


class Dropout(OnnxOpConverter):
    """``Dropout`` at inference: ``y = x`` and, when asked for, a ``mask`` of all True (bool).

    TVM returns its dropout op's float mask. Training mode with a non-zero ratio draws random
    numbers: refused (no expected value exists for another generator).
    """

    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        return cls._identity(inputs[0], attr)

    @classmethod
    def _impl_v12(cls, bb, inputs, attr, params):
        x, ratio, training = inputs[0], input_at(inputs, 1), input_at(inputs, 2)
        if training is not None:
            training_mode = bool(constant(training, params, "Dropout", attr, "training_mode"))
            rate = (
                0.5 if ratio is None else float(constant(ratio, params, "Dropout", attr, "ratio"))
            )
            if training_mode and rate != 0.0:
                raise fail("Dropout", attr, "training mode with a non-zero ratio is random")
        return cls._identity(x, attr)

    @staticmethod
    def _identity(x, attr):
        if num_outputs(attr) == 1:
            return x
        mask = relax.op.full_like(x, relax.const(True, "bool"), dtype="bool")
        return relax.Tuple([x, mask])


class OptionalHasElement(onnx_frontend.OptionalHasElement):
    """``OptionalHasElement`` of an omitted input is False (TVM counts the inputs and fails)."""

    @classmethod
    def _impl_v15(cls, bb, inputs, attr, params):
        if len(inputs) == 0:
            return relax.const(False, dtype="bool")
        return super()._impl_v15(bb, inputs, attr, params)

    _impl_v18 = _impl_v15


class Unsqueeze(onnx_frontend.Unsqueeze):
    """``Unsqueeze`` with a 0-D ``axes`` constant, read as one axis.

    Function bodies write the axis as a scalar (AffineGrid's ``Unsqueeze(grid_w, minus_one)``
    with ``minus_one = Constant <value_int = -1>``; onnx's reference takes it, as
    ``np.expand_dims`` does). TVM's converter iterates the value (``'int' object is not
    iterable``).
    """

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        axes = input_at(inputs, 1)
        if axes is not None:
            axes = onnx_frontend.get_constant(axes, params)
            if is_constant(axes) and axes.value.numpy().ndim == 0:
                inputs = [inputs[0], relax.const(axes.value.numpy().reshape(1), "int64")]
        return super()._impl_v13(bb, inputs, attr, params)


CONVERTERS: dict[str, type[OnnxOpConverter]] = {
    "BitCast": BitCast,
    "Pow": Pow,
    "Mod": Mod,
    "BitShift": BitShift,
    "IsInf": IsInf,
    "Elu": Elu,
    "Celu": Celu,
    "Swish": Swish,
    "SwiGLU": SwiGLU,
    "EyeLike": EyeLike,
    "Dropout": Dropout,
    "OptionalHasElement": OptionalHasElement,
    "Unsqueeze": Unsqueeze,
    **REDUCE_CONVERTERS,
    **INDEXING_CONVERTERS,
    **SIGNAL_CONVERTERS,
    **SPATIAL_CONVERTERS,
    **DETECTION_CONVERTERS,
    **INTEGER_CONVERTERS,
}
