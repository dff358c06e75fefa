"""Facts about an ``onnx_ir.Model``: its signature, op histogram and parameter bytes.

Used by ``inspect``, the build report and the artifact manifest. Nothing here changes the model,
and nothing reads weight data (sizes come from dtypes and shapes).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import onnx_ir as ir

from compiler.errors import InputError

__all__ = [
    "ModelStats",
    "TensorSpec",
    "concrete_shape",
    "index_ranges",
    "model_stats",
    "signature",
]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype name, and dims (ints, or names if symbolic)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...] | None

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": _json_shape(self.shape)}


def _json_shape(shape: tuple[int | str, ...] | None) -> list | None:
    return None if shape is None else list(shape)


def _spec(value: ir.Value) -> TensorSpec:
    dtype = value.dtype
    dtype_name = str(np.dtype(dtype.numpy())) if dtype is not None else "unknown"
    shape = None
    if value.shape is not None:
        dims: list[int | str] = []
        for i, dim in enumerate(value.shape):
            if isinstance(dim, int):
                dims.append(dim)
            else:
                dims.append(dim.value if getattr(dim, "value", None) else f"{value.name}_dim{i}")
        shape = tuple(dims)
    return TensorSpec(value.name or "", dtype_name, shape)


def signature(model: ir.Model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's real inputs (initializers excluded) and outputs."""
    initializers = set(model.graph.initializers)
    inputs = [_spec(v) for v in model.graph.inputs if v.name not in initializers]
    outputs = [_spec(v) for v in model.graph.outputs]
    return inputs, outputs


# Ops whose ``indices`` input (position 1) selects along ``axis`` of the data (position 0).
_INDEXING_OPS = {"Gather": 0, "GatherElements": 0}


def index_ranges(model: ir.Model) -> dict[str, dict]:
    """For each integer graph input used directly as the indices of a Gather/GatherElements
    whose data has a static extent ``d`` along the gathered axis: the valid range ``[-d, d)``
    (ONNX counts negative indices from the end) and the node that sets it.

    Compiled gathers do not check bounds (TVM's ``take`` reads out of bounds: garbage or a
    crash), so the runtime checks these inputs before the call. With several such uses the
    tightest range wins.
    """
    ranges: dict[str, dict] = {}
    inputs = {v.name for v in model.graph.inputs if v.name not in model.graph.initializers}
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _INDEXING_OPS:
            continue
        if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].name not in inputs:
            continue
        data = node.inputs[0]
        attribute = node.attributes.get("axis")
        axis = attribute.as_int() if attribute is not None else _INDEXING_OPS[node.op_type]
        if data is None or data.shape is None or not -len(data.shape) <= axis < len(data.shape):
            continue
        extent = data.shape[axis]
        if not isinstance(extent, int):
            continue
        name = node.inputs[1].name
        if name not in ranges or extent < ranges[name]["high"]:
            ranges[name] = {"low": -extent, "high": extent, "node": node.name, "op": node.op_type}
    return ranges


def concrete_shape(spec: TensorSpec, overrides: Mapping[str, int] | None = None) -> tuple[int, ...]:
    """``spec``'s shape with symbolic dims taken from ``overrides`` (by dim name), else 1."""
    if spec.shape is None:
        raise InputError(f"input {spec.name!r} has no known rank; give its shape explicitly")
    overrides = overrides or {}
    return tuple(d if isinstance(d, int) else int(overrides.get(d, 1)) for d in spec.shape)


@dataclasses.dataclass
class ModelStats:
    """Counts for reports: nodes, ops, parameters (elements), bytes per dtype, and FLOPs.

    ``flops`` counts multiply-adds as 2 for MatMul, Gemm and Conv (the ops that dominate);
    ``flops_unknown`` is the number of such nodes whose shapes are unknown (run infer-shapes).
    """

    nodes: int
    ops: dict[str, int]
    parameters: int
    parameter_bytes: dict[str, int]
    flops: int = 0
    flops_unknown: int = 0

    @property
    def total_parameter_bytes(self) -> int:
        return sum(self.parameter_bytes.values())

    def to_json(self) -> dict:
        return {
            "nodes": self.nodes,
            "ops": self.ops,
            "parameters": self.parameters,
            "parameter_bytes": self.parameter_bytes,
            "total_parameter_bytes": self.total_parameter_bytes,
            "flops": self.flops,
            "flops_unknown_nodes": self.flops_unknown,
        }


def _all_nodes(model: ir.Model) -> Iterable[ir.Node]:
    yield from ir.traversal.RecursiveGraphIterator(model.graph)
    for function in model.functions.values():
        yield from ir.traversal.RecursiveGraphIterator(function)


def _op_key(node: ir.Node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def _static(shape) -> list[int] | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return list(shape)


def node_flops(node: ir.Node) -> int | None:
    """2 × multiply-adds of a MatMul, Gemm, Conv (and their quantized forms: MatMulInteger,
    MatMulNBits) node; 0 for other ops; None if unknown."""
    if node.domain == "com.microsoft" and node.op_type == "MatMulNBits":
        a = _static(node.inputs[0].shape) if node.inputs[0] is not None else None
        if a is None:
            return None
        rows = int(np.prod(a[:-1])) if len(a) > 1 else 1
        return 2 * rows * node.attributes["K"].as_int() * node.attributes["N"].as_int()
    matmul_like = ("MatMul", "Gemm", "Conv", "MatMulInteger")
    if node.domain not in ("", "ai.onnx") or node.op_type not in matmul_like:
        return 0
    out = _static(node.outputs[0].shape)
    a = _static(node.inputs[0].shape) if node.inputs[0] is not None else None
    b = _static(node.inputs[1].shape) if node.inputs[1] is not None else None
    if out is None or a is None or b is None:
        return None
    size = int(np.prod(out)) if out else 1
    if node.op_type in ("MatMul", "MatMulInteger"):
        return 2 * size * a[-1]
    if node.op_type == "Gemm":
        trans_a = node.attributes.get("transA")
        k = a[0] if trans_a is not None and trans_a.as_int() else a[-1]
        return 2 * size * k
    return 2 * size * int(np.prod(b[1:]))  # Conv: W is [C_out, C_in / groups, k...]


def model_stats(model: ir.Model) -> ModelStats:
    """Counts nodes and ops (subgraphs and functions included), initializer sizes and FLOPs."""
    ops: collections.Counter[str] = collections.Counter()
    nodes = flops = unknown = 0
    for node in _all_nodes(model):
        nodes += 1
        ops[_op_key(node)] += 1
        count = node_flops(node)
        if count is None:
            unknown += 1
        else:
            flops += count
    parameters = 0
    by_dtype: collections.Counter[str] = collections.Counter()
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None:
            continue
        parameters += tensor.size
        by_dtype[tensor.dtype.name.lower()] += tensor.nbytes
    return ModelStats(
        nodes, dict(ops.most_common()), parameters, dict(sorted(by_dtype.items())), flops, unknown
    )
