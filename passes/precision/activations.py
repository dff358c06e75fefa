"""fp16 activations: compute in float16 with float32 islands, chosen by policy, range and error.

The conversion itself is onnxruntime's ``float16.convert_float_to_float16`` (weights and
activations of every node not blocked become float16; ``Cast`` nodes go on every edge between a
float16 and a float32 node; the model's inputs and outputs keep their types). What this module
decides is which nodes stay float32:

* **policy** (:data:`FLOAT32_OPS`): reductions, normalizations, softmax and the exponentials,
  powers and roots they are built from accumulate or amplify rounding error, so they compute in
  float32 — plus onnxruntime's own list of ops without float16 kernels. So do the activation
  functions' transcendentals (erf, tanh, sigmoid): TVM evaluates their polynomial
  approximations in the operand's type, and a 16-bit erf moved MiniLM's output by 0.11
  (normalized max error) against onnxruntime;
* **overflow**: every node that reads or writes a float value whose largest magnitude on the
  calibration inputs exceeds ``65504 / HEADROOM`` (float16's largest finite value, with room for
  inputs larger than the calibration set's) — e.g. ``x²`` inside a decomposed RMSNorm;
* **sensitivity** (the pass manager's per-layer rollback): each MatMul/Gemm records its *local*
  error — the relative RMS error of its output in the float16 model minus that of its input, both
  against the float32 model on one calibration input — and the worst layers are kept in float32
  when the pass exceeds its accuracy budget.

bfloat16 activations are not offered: onnxruntime's CPU kernels have no bfloat16 MatMul, Add or
Softmax, so neither the accuracy budget nor the build's verification could run the result.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

__all__ = ["FLOAT32_OPS", "HEADROOM", "cast_activations", "local_errors"]

FLOAT16_MAX = 65504.0
HEADROOM = 2.0
FLOAT32_OPS = frozenset(
    {
        "Softmax", "LogSoftmax", "LayerNormalization", "SimplifiedLayerNormalization",
        "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization",
        "BatchNormalization", "InstanceNormalization", "GroupNormalization",
        "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
        "ReduceLogSumExp", "ReduceProd", "CumSum", "Exp", "Log", "Pow", "Sqrt", "Reciprocal",
        "Erf", "Tanh", "Sigmoid", "Softplus", "Gelu", "FastGelu",
    }
)  # fmt: skip


def _float_values(graph: ir.Graph) -> dict[str, list[ir.Node]]:
    """Every float32 value read or written by a node -> those nodes."""
    touching: dict[str, list[ir.Node]] = {}
    for node in graph:
        for value in [*node.inputs, *node.outputs]:
            if value is None or value.dtype != ir.DataType.FLOAT or value.const_value is not None:
                continue
            touching.setdefault(value.name, []).append(node)
    return touching


def overflow_nodes(graph: ir.Graph, peaks: Mapping[str, float]) -> dict[str, str]:
    """Node name -> reason, for nodes touching a value beyond float16's range (with headroom)."""
    touching = _float_values(graph)
    blocked: dict[str, str] = {}
    for name, peak in peaks.items():
        if peak * HEADROOM <= FLOAT16_MAX:
            continue
        for node in touching.get(name, []):
            blocked.setdefault(node.name, f"overflow: |{name}| reaches {peak:.4g}")
    return blocked


def cast_activations(model: ir.Model, keep_float: set[str]) -> ir.Model:
    """A new model computing in float16 except the policy ops and the ``keep_float`` nodes
    (by name: every node must have a unique one)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from compiler.serialize import proto_with_weights

    proto = proto_with_weights(model)
    converted = convert_float_to_float16(
        proto,
        keep_io_types=True,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | FLOAT32_OPS),
        node_block_list=sorted(keep_float),
    )
    result = ir.from_proto(converted)
    result.graph.sort()  # the converter appends its input Casts after their users
    _drop_round_trips(result.graph)
    return result


def _is_cast(node: ir.Node | None, to: ir.DataType) -> bool:
    return (
        node is not None
        and node.op_type == "Cast"
        and node.domain == ""
        and node.attributes.get_int("to", 0) == int(to)
    )


def _drop_round_trips(graph: ir.Graph) -> None:
    """``Cast(Cast(x: float32, to=fp16), to=fp32)`` -> ``x``.

    The converter routes an edge between two float32 nodes through float16 (it casts every
    blocked node's inputs and outputs); that round trip would overflow exactly where a node was
    kept in float32 because of its range, and costs precision where the policy kept it.
    """
    for node in list(graph):
        source = node.inputs[0] if _is_cast(node, ir.DataType.FLOAT) else None
        producer = source.producer() if source is not None else None
        if not _is_cast(producer, ir.DataType.FLOAT16) or node.outputs[0].is_graph_output():
            continue
        original = producer.inputs[0]
        if original is None or original.dtype != ir.DataType.FLOAT:
            continue
        ir.convenience.replace_all_uses_with(node.outputs[0], original)
        graph.remove(node, safe=True)
        if not producer.outputs[0].uses() and not producer.outputs[0].is_graph_output():
            graph.remove(producer, safe=True)


def local_errors(
    reference: Mapping[str, np.ndarray], converted: Mapping[str, np.ndarray], graph: ir.Graph
) -> dict[str, float]:
    """Per MatMul/Gemm node of ``graph`` (the float32 model): relative RMS error of its output
    minus that of its input (0 when negative), from values of both models on the same input."""

    def error(name: str) -> float | None:
        if name not in reference or name not in converted:
            return None
        ref = np.asarray(reference[name], np.float64)
        got = np.asarray(converted[name], np.float64)
        return float(np.sqrt(((got - ref) ** 2).mean() / max((ref**2).mean(), 1e-30)))

    errors = {}
    for node in graph:
        if node.op_type not in ("MatMul", "Gemm") or node.domain != "":
            continue
        out, inp = error(node.outputs[0].name), error(node.inputs[0].name)
        if out is not None:
            errors[node.name] = max(out - (inp or 0.0), 0.0)
    return errors
