"""W8A8: int8 weights *and* int8 activations for MatMul/Gemm, as standard ONNX ops.

For ``y = x · W`` (``W`` ``[K, N]``) with int8 weights ``W ≈ W_q · s_w`` (symmetric, one scale per
output channel) and uint8 activations ``x ≈ (x_q − z_x) · s_x`` (one scale per tensor)::

    y ≈ s_x · s_w ⊙ Σ_k (x_q[k] − z_x) · W_q[k, :]        (the sum is exact in int32)

emitted as ``MatMulInteger(x_q, W_q, z_x)`` (int32) → ``Cast`` (float) → ``Mul`` by ``s_x · s_w``.

* dynamic: ``DynamicQuantizeLinear(x)`` computes ``s_x, z_x`` from each input's own min/max (no
  calibration needed);
* static: ``QuantizeLinear(x, s_x, z_x)`` with constants from the calibration ranges of ``x``
  (:func:`compiler.calibration.activation_ranges`: ``minmax`` or ``percentile``).

Both runtimes run these ops: onnxruntime natively, the TVM backend by lowering ``MatMulInteger``
on constant int8 weights to its packed 8-bit kernels (:mod:`backends.tvm.quantized`).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compiler.ir_utils import add_initializer
from passes.quantize.grid import QuantizedWeight

__all__ = ["activation_grid", "emit_w8a8"]


def activation_grid(low: float, high: float) -> tuple[np.float32, np.uint8]:
    """uint8 scale and zero point covering ``[min(low, 0), max(high, 0)]`` (0 exact)."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = (high - low) / 255.0 or 1.0
    zero = int(np.clip(round(-low / scale), 0, 255))
    return np.float32(scale), np.uint8(zero)


def emit_w8a8(
    graph: ir.Graph,
    node: ir.Node,
    quantized: QuantizedWeight,
    stem: str,
    activation: tuple[np.float32, np.uint8] | None,
) -> list[ir.Node]:
    """The nodes replacing ``node`` (its output is the last node's output; a bias is added by
    the caller).

    ``quantized``: the weight as ``[N, K]`` int8 codes (symmetric, per channel, zero point 128);
    ``activation``: static ``(scale, zero point)`` or ``None`` for dynamic quantization.
    """
    if quantized.bits != 8 or not quantized.symmetric or quantized.groups != 1:
        raise ValueError("W8A8 needs 8-bit symmetric per-channel weights")
    codes = (quantized.codes.astype(np.int16) - 128).astype(np.int8).T  # [K, N]
    weight = add_initializer(graph, f"{stem}_w8", np.ascontiguousarray(codes))
    w_scale = quantized.scales[:, 0].astype(np.float32)
    x = node.inputs[0]
    nodes: list[ir.Node] = []
    if activation is None:
        dq = ir.node("DynamicQuantizeLinear", [x], num_outputs=3)
        x_q, x_scale, x_zero = dq.outputs
        scale = ir.node("Mul", [x_scale, add_initializer(graph, f"{stem}_w_scale", w_scale)])
        nodes += [dq, scale]
        combined = scale.outputs[0]
    else:
        s_x, z_x = activation
        x_scale = add_initializer(graph, f"{stem}_x_scale", np.array(s_x, np.float32))
        x_zero = add_initializer(graph, f"{stem}_x_zero", np.array(z_x, np.uint8))
        q = ir.node("QuantizeLinear", [x, x_scale, x_zero])
        nodes.append(q)
        x_q = q.outputs[0]
        combined = add_initializer(graph, f"{stem}_scale", (w_scale * s_x).astype(np.float32))
    x_q.shape, x_q.dtype = x.shape, ir.DataType.UINT8
    matmul = ir.node("MatMulInteger", [x_q, weight, x_zero], name=node.name)
    matmul.outputs[0].shape, matmul.outputs[0].dtype = node.outputs[0].shape, ir.DataType.INT32
    cast = ir.node("Cast", [matmul.outputs[0]], attributes={"to": int(ir.DataType.FLOAT)})
    out = ir.node("Mul", [cast.outputs[0], combined])
    nodes += [matmul, cast, out]
    return nodes
