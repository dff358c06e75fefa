"""``cast``: store large float32 weights in bfloat16 or float16, compute in float32.

Each float32 initializer with at least ``min_size`` elements that feeds a ``MatMul``, ``Gemm``,
``Gather`` (embedding tables) or ``Conv`` is replaced by a 16-bit copy followed by
``Cast(to=FLOAT)``; everything downstream — reductions, normalizations, softmax, accumulation —
stays float32, and the model's inputs and outputs keep their types. Weights halve in bytes; the
rounding is the only error (relative 2⁻⁹ for bf16, 2⁻¹² for fp16 per weight).

Overflow: a weight with any |value| above the target's largest finite value (65504 for fp16)
stays float32, and the record says so. Small tensors (norm scales, biases) stay float32: they
cost nothing and are the most sensitive.

Scope: this is weight-only casting. Casting activations (compute in 16 bits, with float32 islands
for reductions) is the GPU recipe's job and needs 16-bit kernels on the target; on this CPU both
runtimes would upcast anyway.
"""

from __future__ import annotations

from typing import Literal

import ml_dtypes
import numpy as np
import onnx_ir as ir

from compiler.errors import InputError
from compiler.ir_utils import add_initializer, read_records, write_records

__all__ = ["RECORD_KEY", "CastPass", "cast_records"]

RECORD_KEY = "compiler.cast"
_CONSUMERS = {"MatMul", "Gemm", "Gather", "Conv", "ConvTranspose"}
_TYPES = {"bf16": ml_dtypes.bfloat16, "fp16": np.float16}


def cast_records(model: ir.Model) -> list[dict]:
    """The per-weight records the ``cast`` pass left in ``model``'s metadata."""
    return read_records(model, RECORD_KEY)


class CastPass(ir.passes.InPlacePass):
    """Stores float32 weights of matmuls, embeddings and convolutions in bf16 or fp16."""

    name = "cast"
    lossy = True

    def __init__(self, *, dtype: Literal["bf16", "fp16"] = "bf16", min_size: int = 1024) -> None:
        super().__init__()
        if min_size < 1:
            raise InputError(f"cast: min_size must be >= 1, not {min_size}")
        self.dtype, self.min_size = dtype, min_size

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        target = _TYPES[self.dtype]
        limit = float(ml_dtypes.finfo(target).max)
        records = cast_records(model)
        changed = False
        for value in list(graph.initializers.values()):
            tensor = value.const_value
            if tensor is None or tensor.dtype != ir.DataType.FLOAT or tensor.size < self.min_size:
                continue
            users = value.uses()
            if not users or value.is_graph_output():
                continue
            if any(user.op_type not in _CONSUMERS or user.domain != "" for user, _ in users):
                continue
            array = tensor.numpy()
            peak = float(np.abs(array).max())
            if peak > limit:
                records.append({"weight": value.name, "kept": "float32", "reason": "overflow"})
                continue
            low = add_initializer(graph, f"{value.name}_{self.dtype}", array.astype(target))
            cast = ir.node("Cast", [low], attributes={"to": int(ir.DataType.FLOAT)})
            cast.outputs[0].shape, cast.outputs[0].dtype = ir.Shape(array.shape), ir.DataType.FLOAT
            graph.insert_before(users[0][0], cast)
            for user, index in users:
                user.replace_input_with(index, cast.outputs[0])
            graph.initializers.pop(value.name)
            records.append({"weight": value.name, "dtype": self.dtype, "elements": tensor.size})
            changed = True
        write_records(model, RECORD_KEY, records)
        if changed:
            graph.sort()  # the Cast must precede every user, not just the first
        return ir.passes.PassResult(model, modified=changed)
