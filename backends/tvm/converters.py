"""Extensions to TVM's Relax ONNX importer for ops our passes emit.

TVM 0.27's importer looks converters up in ``onnx_frontend._get_convert_map()``, a function that
builds its table on every call, and offers no registration hook. :func:`extended_converters`
wraps that function for the duration of one import, adding or replacing entries from
:data:`CONVERTERS`; it restores the original on exit (imports are not run concurrently).

* ``PackedMatMul``/``PackedGather`` (compiler.tvm): what ``MatMulNBits``/``GatherBlockQuantized``
  are lowered to before import, see
  :mod:`backends.tvm.quantized`.
* ``SkipLayerNormalization`` (com.microsoft): TVM's own converter requires ``beta`` and
  ``bias`` and drops the ``input_skip_bias_sum`` output, which onnxscript's residual+LayerNorm
  fusion emits without beta/bias and whose sum output feeds the next residual. Ours computes
  ``s = input + skip [+ bias]``, ``LayerNorm(s, gamma, beta or 0)`` over the last axis and
  returns ``(output, 0, 0, s)`` (mean and inverse std are not materialized; nothing we emit reads
  them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

__all__ = ["CONVERTERS", "extended_converters"]


def _input(inputs, index: int):
    return inputs[index] if len(inputs) > index else None


class SkipLayerNormalization(OnnxOpConverter):
    """com.microsoft SkipLayerNormalization with optional beta/bias and the sum output."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        data, skip, gamma = inputs[0], inputs[1], inputs[2]
        beta, bias = _input(inputs, 3), _input(inputs, 4)
        epsilon = attr.get("epsilon", 1e-12)
        total = relax.op.add(data, skip)
        if bias is not None:
            total = relax.op.add(total, bias)
        total = bb.normalize(total)
        dtype = total.ty.dtype
        if beta is None:
            beta = relax.op.zeros(gamma.ty.shape, dtype)
        output = relax.op.nn.layer_norm(total, gamma, beta, axes=-1, epsilon=epsilon)
        placeholder = relax.const(0, dtype=dtype)
        return relax.Tuple([output, placeholder, placeholder, total])


def _converters() -> dict[str, type[OnnxOpConverter]]:
    from backends.tvm.quantized import PackedGather, PackedMatMul

    return {
        "SkipLayerNormalization": SkipLayerNormalization,
        "PackedMatMul": PackedMatMul,
        "PackedGather": PackedGather,
    }


CONVERTERS: dict[str, type[OnnxOpConverter]] = _converters()


def converter_names() -> set[str]:
    """Op names TVM's importer handles once extended."""
    return set(onnx_frontend._get_convert_map()) | set(CONVERTERS)


@contextlib.contextmanager
def extended_converters() -> Iterator[None]:
    """TVM's importer with :data:`CONVERTERS` added, for the duration of the block."""
    original = onnx_frontend._get_convert_map

    def extended():
        table = original()
        table.update(CONVERTERS)
        return table

    onnx_frontend._get_convert_map = extended
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original
