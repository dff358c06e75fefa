"""W8A8: int8 weights *and* int8 activations for MatMul/Gemm, as standard ONNX ops.

For ``y = x · W`` (``W`` ``[K, N]``) with int8 weights ``W ≈ W_q · s_w`` (symmetric, one scale per
output channel) and uint8 activations ``x ≈ (x_q − z_x) · s_x`` (one scale per tensor)::

    y ≈ s_x · s_w ⊙ Σ_k (x_q[k] − z_x) · W_q[k, :]        (the sum is exact in int32)

emitted as ``MatMulInteger(x_q, W_q, z_x)`` (int32) → ``Cast`` (float) → ``Mul`` by ``s_x · s_w``.

* dynamic: ``DynamicQuantizeLinear(x)`` computes ``s_x, z_x`` from each input's own min/max (no
  calibration needed);
* token (dynamic, one grid per row — per token): asymmetric uint8 per row,
  ``s_t = (max(hi_t, 0) − min(lo_t, 0)) / 255``, ``z_t = round(−min(lo_t, 0) / s_t)``,
  ``x_q = clip(round(x / s_t) + z_t, 0, 255)``, computed by standard ops (``ReduceMin/Max``,
  ``Div``, ``Round``, ``Clip``, ``Cast``); then, with ``c_n = Σ_k W_q[k, n]``,
  ``y = (float(MatMulInteger(x_q, W_q)) − z_t · c) · s_t · s_w``. A token with large values no
  longer coarsens every other token's grid, and one-sided inputs (GELU outputs) use all 256
  steps.

Both runtimes run these ops: onnxruntime natively, the TVM backend by lowering ``MatMulInteger``
on constant int8 weights to its packed 8-bit kernels (:mod:`backends.tvm.quantized`).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compiler.ir_utils import add_initializer
from passes.quantize.grid import QuantizedWeight

__all__ = ["activation_grid", "emit_w8a8"]

TINY = np.float32(1e-30)  # a row of zeros gets this scale instead of 0 (no division by zero)


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
    *,
    per_token: bool = False,
) -> list[ir.Node]:
    """The nodes replacing ``node`` (its output is the last node's output; a bias is added by
    the caller).

    ``quantized``: the weight as ``[N, K]`` int8 codes (symmetric, per channel, zero point 128);
    ``activation``: static ``(scale, zero point)`` or ``None`` for dynamic quantization;
    ``per_token``: dynamic, one asymmetric grid per row (``activation`` must be ``None``).
    """
    if quantized.bits != 8 or not quantized.symmetric or quantized.groups != 1:
        raise ValueError("W8A8 needs 8-bit symmetric per-channel weights")
    codes = (quantized.codes.astype(np.int16) - 128).astype(np.int8).T  # [K, N]
    weight = add_initializer(graph, f"{stem}_w8", np.ascontiguousarray(codes))
    w_scale = quantized.scales[:, 0].astype(np.float32)
    x = node.inputs[0]
    nodes: list[ir.Node] = []
    x_zero: ir.Value | None = None
    row_zero: ir.Value | None = None
    if per_token:
        if activation is not None:
            raise ValueError("per-token activation scales are dynamic")
        nodes, x_q, row_scale, row_zero = _quantize_rows(graph, x, stem)
        scale = ir.node("Mul", [row_scale, add_initializer(graph, f"{stem}_w_scale", w_scale)])
        nodes.append(scale)
        combined = scale.outputs[0]
    elif activation is None:
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
    inputs = [x_q, weight] if x_zero is None else [x_q, weight, x_zero]
    matmul = ir.node("MatMulInteger", inputs, name=node.name)
    matmul.outputs[0].shape, matmul.outputs[0].dtype = node.outputs[0].shape, ir.DataType.INT32
    cast = ir.node("Cast", [matmul.outputs[0]], attributes={"to": int(ir.DataType.FLOAT)})
    nodes += [matmul, cast]
    accumulated = cast.outputs[0]
    if row_zero is not None:  # Σ_k (x_q − z_t) W_q = Σ_k x_q W_q − z_t · c
        column_sums = codes.astype(np.int64).sum(axis=0).astype(np.float32)
        offset = ir.node("Mul", [row_zero, add_initializer(graph, f"{stem}_colsum", column_sums)])
        centered = ir.node("Sub", [accumulated, offset.outputs[0]])
        nodes += [offset, centered]
        accumulated = centered.outputs[0]
    out = ir.node("Mul", [accumulated, combined])
    nodes.append(out)
    return nodes


def _quantize_rows(
    graph: ir.Graph, x: ir.Value, stem: str
) -> tuple[list[ir.Node], ir.Value, ir.Value, ir.Value]:
    """``x`` -> (nodes, uint8 ``x_q``, float ``s_t`` and ``z_t`` ``[..., 1]``): asymmetric
    uint8 per row."""

    def const(name: str, value: float | list[int], dtype=np.float32) -> ir.Value:
        return add_initializer(graph, f"{stem}_{name}", np.array(value, dtype))

    if graph.opset_imports.get("", 18) >= 18:
        axes = const("row_axes", [-1], np.int64)
        low = ir.node("ReduceMin", [x, axes], attributes={"keepdims": 1})
        high = ir.node("ReduceMax", [x, axes], attributes={"keepdims": 1})
    else:
        low = ir.node("ReduceMin", [x], attributes={"axes": [-1]})
        high = ir.node("ReduceMax", [x], attributes={"axes": [-1]})
    zero = const("zero", 0.0)
    low0 = ir.node("Min", [low.outputs[0], zero])
    high0 = ir.node("Max", [high.outputs[0], zero])
    span = ir.node("Sub", [high0.outputs[0], low0.outputs[0]])
    step = ir.node("Mul", [span.outputs[0], const("inv255", 1 / 255)])
    scale = ir.node("Max", [step.outputs[0], const("tiny", TINY)])
    negated = ir.node("Neg", [low0.outputs[0]])
    zero_ratio = ir.node("Div", [negated.outputs[0], scale.outputs[0]])
    row_zero = ir.node("Round", [zero_ratio.outputs[0]])
    divided = ir.node("Div", [x, scale.outputs[0]])
    rounded = ir.node("Round", [divided.outputs[0]])
    shifted = ir.node("Add", [rounded.outputs[0], row_zero.outputs[0]])
    clipped = ir.node("Clip", [shifted.outputs[0], zero, const("q_high", 255.0)])
    codes = ir.node("Cast", [clipped.outputs[0]], attributes={"to": int(ir.DataType.UINT8)})
    nodes = [low, high, low0, high0, span, step, scale, negated, zero_ratio, row_zero]
    nodes += [divided, rounded, shifted, clipped, codes]
    return nodes, codes.outputs[0], scale.outputs[0], row_zero.outputs[0]
