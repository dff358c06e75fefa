"""``cast``: store large float32 weights in bfloat16 or float16, compute in float32.

Each float32 initializer with at least ``min_size`` elements that feeds a ``MatMul``, ``Gemm``,
``Gather`` (embedding tables) or ``Conv`` is replaced by a 16-bit copy followed by
``Cast(to=FLOAT)``; everything downstream — reductions, normalizations, softmax, accumulation —
stays float32, and the model's inputs and outputs keep their types. Weights halve in bytes; the
rounding is the only error (relative 2⁻⁹ for bf16, 2⁻¹² for fp16 per weight).

Overflow: a weight with any |value| above the target's largest finite value (65504 for fp16)
stays float32, and the record says so. Small tensors (norm scales, biases) stay float32: they
cost nothing and are the most sensitive.

With ``activations=true`` (fp16 only) the model *computes* in float16 too, with float32 islands
chosen by op policy, by the value ranges seen on the calibration inputs (overflow), and — under
an accuracy budget — by per-layer sensitivity: see :mod:`passes.precision.activations`. The
records then list every node kept in float32 with its reason, and each MatMul/Gemm's local error.
``samples`` sets how many calibration samples the ranges come from (0: all; without calibration
data, one seeded input, and the records say so).
"""

from __future__ import annotations

import copy
from typing import Literal

import ml_dtypes
import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common

from compiler.errors import InputError
from compiler.ir_utils import add_initializer, read_records, write_records
from passes.precision.activations import cast_activations, local_errors, overflow_nodes

__all__ = ["RECORD_KEY", "CastPass", "cast_records"]

RECORD_KEY = "compiler.cast"
_CONSUMERS = {"MatMul", "Gemm", "Gather", "Conv", "ConvTranspose"}
_TYPES = {"bf16": ml_dtypes.bfloat16, "fp16": np.float16}


def cast_records(model: ir.Model) -> list[dict]:
    """The per-weight records the ``cast`` pass left in ``model``'s metadata."""
    return read_records(model, RECORD_KEY)


class CastPass(ir.passes.PassBase):
    """Stores float32 weights of matmuls, embeddings and convolutions in bf16 or fp16; with
    ``activations``, computes in fp16 with float32 islands."""

    name = "cast"
    lossy = True
    record_key = RECORD_KEY

    def __init__(
        self,
        *,
        dtype: Literal["bf16", "fp16"] = "bf16",
        min_size: int = 1024,
        activations: bool = False,
        samples: int = 4,
    ) -> None:
        super().__init__()
        if min_size < 1:
            raise InputError(f"cast: min_size must be >= 1, not {min_size}")
        if activations and dtype != "fp16":
            raise InputError(
                "cast(activations=true) computes in fp16 only: onnxruntime's CPU kernels have no "
                "bf16 MatMul/Add/Softmax, so the result could not be verified (bf16 stays "
                "weight-only)"
            )
        self.dtype, self.min_size = dtype, min_size
        self.activations, self.samples = activations, samples
        self.context = None  # set by the pass manager: calibration data
        self.skip: frozenset[str] = frozenset()  # nodes kept in float32 (per-layer rollback)

    @property
    def in_place(self) -> bool:
        return not self.activations  # the fp16 conversion builds a new model

    @property
    def changes_input(self) -> bool:
        return not self.activations

    def without_nodes(self, names: set[str]) -> CastPass:
        """This pass, keeping the named nodes in float32 (the per-layer rollback)."""
        clone = copy.copy(self)
        clone.skip = frozenset(self.skip | set(names))
        return clone

    @staticmethod
    def layer_errors(records: list[dict]) -> dict[str, float]:
        """Per MatMul/Gemm node: its local error in the fp16 model."""
        return {r["node"]: r["local_error"] for r in records if "local_error" in r}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.activations:
            return self._cast_activations(model)
        return self._cast_weights(model)

    def _feeds(self, model: ir.Model) -> tuple[list[dict[str, np.ndarray]], str]:
        """Calibration inputs, else seeded ones (the records say which)."""
        from compiler.model_info import concrete_shape, signature
        from compiler.numerics import random_inputs

        calibration = getattr(self.context, "calibration", None)
        if calibration is not None:
            return calibration.feeds[: self.samples or None], "calibration"
        specs, _ = signature(model)
        shapes = [(s.name, np.dtype(s.dtype), concrete_shape(s, None)) for s in specs]
        return [random_inputs(shapes, seed=0)], "seeded random inputs (no calibration data)"

    def _cast_activations(self, model: ir.Model) -> ir.passes.PassResult:
        from backends.onnxruntime.reference import ReferenceSession
        from compiler.calibration import value_peaks

        if any(not node.name for node in model.graph):
            ir.passes.common.NameFixPass()(model)  # float32 islands are chosen by node name
        feeds, source = self._feeds(model)
        graph = model.graph
        names = sorted(
            {
                v.name
                for node in graph
                for v in node.outputs
                if v.dtype == ir.DataType.FLOAT and v.const_value is None
            }
            | {v.name for v in graph.inputs if v.dtype == ir.DataType.FLOAT}
        )
        blocked = overflow_nodes(graph, value_peaks(model, feeds, names))
        blocked.update({name: "kept in float32 (accuracy budget)" for name in self.skip})
        converted = cast_activations(model, set(blocked))
        layers = [n for n in graph if n.op_type in ("MatMul", "Gemm") and n.domain == ""]
        probe = sorted({v.name for n in layers for v in (n.inputs[0], n.outputs[0])})
        reference = ReferenceSession(model, extra_outputs=probe).run(feeds[0])
        converted_probe = [name for name in probe if _has_value(converted.graph, name)]
        fp16 = ReferenceSession(converted, extra_outputs=converted_probe).run(feeds[0])
        errors = local_errors(reference, fp16, graph)
        records = cast_records(model)
        records.append(
            {
                "mode": "activations",
                "dtype": "fp16",
                "ranges_from": source,
                "kept_float32": [{"node": n, "reason": r} for n, r in sorted(blocked.items())],
                "float16_nodes": sum(
                    1
                    for node in converted.graph
                    if any(v.dtype == ir.DataType.FLOAT16 for v in node.outputs)
                ),
            }
        )
        records += [
            {"node": node.name, "op": node.op_type, "local_error": errors[node.name]}
            for node in layers
            if node.name in errors and node.name not in blocked
        ]
        write_records(converted, RECORD_KEY, records)
        return ir.passes.PassResult(converted, modified=True)

    def _cast_weights(self, model: ir.Model) -> ir.passes.PassResult:
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


def _has_value(graph: ir.Graph, name: str) -> bool:
    return any(v.name == name for node in graph for v in node.outputs) or any(
        v.name == name for v in graph.inputs
    )
