"""Compiles an ``onnx_ir.Model`` with TVM Relax into an exportable library plus weights.

Route (measured in TVM_NOTES.md): ``ir.Model`` -> ``ModelProto`` *without* its weights: each
weight becomes a graph input of the same name, type and shape -> ``tvm.relax.frontend.onnx.
from_onnx(keep_params_in_input=True)`` -> ``tvm.compile`` with our pipeline for the target. The
weights never enter TVM (importing them made three copies: the proto, TVM's tensors and their
numpy export — 9.5 GiB of peak memory for 2.25 GiB of weights); they are returned as the IR's own
arrays (memory-mapped for external data) in the order the compiled ``main`` takes them after the
model inputs, so the artifact stores them once (safetensors) and the library holds code only.

Before importing, every node's op is checked against the Relax ONNX converter table, so an
unsupported op is reported with the node's name instead of failing deep inside the importer.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from backends.tvm.pipeline import pipeline_for
from backends.tvm.target import resolve_target
from compiler.errors import BackendError
from compiler.serialize import proto_with_weights

__all__ = ["CompiledModule", "ImportedModule", "compile_model", "import_relax", "unsupported_nodes"]

_ONNX_DOMAINS = ("", "ai.onnx", "com.microsoft", "compiler.tvm")


@dataclasses.dataclass
class CompiledModule:
    """A compiled executable, its weights in call order, and the target it was built for."""

    executable: Any  # tvm.runtime.Executable
    param_names: list[str]
    params: list[np.ndarray]
    input_names: list[str]
    target: dict[str, Any]
    tuned_kernels: int = 0  # kernels scheduled from a tuning database

    def export_library(self, path: str | Path) -> None:
        self.executable.export_library(str(path))


def unsupported_nodes(model: ir.Model) -> list[ir.Node]:
    """The nodes of the main graph (and subgraphs) whose op TVM's ONNX importer lacks."""
    from backends.tvm.converters import converter_names

    supported = converter_names()
    return [
        node
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
        if node.domain not in _ONNX_DOMAINS or node.op_type not in supported
    ]


# Initializers at most this many elements, and integer ones of any float-free kind, are handed to
# TVM as Constant nodes instead of weights: with ``keep_params_in_input`` every initializer becomes
# a runtime parameter, and a shape tensor (Expand, Reshape, Slice inputs) that is a runtime value
# gives TVM symbolic shapes it cannot compute. Scalars (epsilons, exponents) also fold better.
INLINE_MAX_ELEMENTS = 64
_SHAPE_DTYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
_INLINE_INT_MAX_ELEMENTS = 4096


def _inline_as_constant(tensor: onnx.TensorProto) -> bool:
    size = int(np.prod(tensor.dims)) if tensor.dims else 1
    if tensor.data_type in _SHAPE_DTYPES:
        return size <= _INLINE_INT_MAX_ELEMENTS
    return size <= INLINE_MAX_ELEMENTS


def _proto_for_tvm(model: ir.Model) -> tuple[onnx.ModelProto, list[str], list[np.ndarray]]:
    """The model as a ModelProto for TVM's importer, and its weights (names, arrays) as the graph
    inputs that stand for them, in order.

    Small and shape-like initializers become ``Constant`` nodes (see ``INLINE_MAX_ELEMENTS``);
    every other initializer becomes a graph input without data, so the proto holds no weights.
    """
    clone = model.clone()  # tensors are shared, not copied
    graph = clone.graph
    names, arrays = [], []
    for value in graph.initializers.values():
        if value in graph.inputs:  # IR < 4 lists initializers as inputs too: they are constants
            graph.inputs.remove(value)
    for value in list(graph.initializers.values()):
        tensor = value.const_value
        if tensor is None or _inline_as_constant_ir(tensor):
            continue
        graph.initializers.pop(value.name)
        value.const_value = None
        value.dtype, value.shape = tensor.dtype, ir.Shape(tensor.shape)
        graph.inputs.append(value)
        names.append(value.name)
        arrays.append(tensor.numpy())
    proto = proto_with_weights(clone)
    if not proto.graph.name:
        proto.graph.name = "main"
    graph_inputs = {i.name for i in proto.graph.input}
    keep, constants = [], []
    for tensor in proto.graph.initializer:
        if tensor.name not in graph_inputs and _inline_as_constant(tensor):
            constants.append(
                onnx.helper.make_node(
                    "Constant", [], [tensor.name], name=f"{tensor.name}_const", value=tensor
                )
            )
        else:
            keep.append(tensor)
    if constants:
        nodes = [*constants, *proto.graph.node]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    return proto, names, arrays


def _inline_as_constant_ir(tensor: ir.TensorProtocol) -> bool:
    size = int(np.prod(tensor.shape.numpy())) if len(tensor.shape) else 1
    if tensor.dtype in (ir.DataType.INT64, ir.DataType.INT32):
        return size <= _INLINE_INT_MAX_ELEMENTS
    return size <= INLINE_MAX_ELEMENTS


@dataclasses.dataclass
class ImportedModule:
    """A model imported into Relax: the module, its weights in call order, and its inputs."""

    mod: Any  # tvm.IRModule, "main" takes the inputs then the weights
    param_names: list[str]
    params: list[np.ndarray]
    input_names: list[str]


def import_relax(
    model: ir.Model,
    *,
    model_name: str = "model",
    packed_kernels: bool = True,
    int8_dot: bool = False,
) -> ImportedModule:
    """Imports ``model`` into Relax; raises :class:`BackendError` naming an unsupported node.

    ``packed_kernels``: lower quantized ops (:mod:`backends.tvm.quantized`) and float32 products
    on constant weights (:mod:`backends.tvm.panel_gemm`) to our CPU kernels; without it (GPU
    targets, for now) quantized ops are reported as unsupported and products go to TVM.
    ``int8_dot``: the target has AVX512-VNNI (see :func:`backends.tvm.quantized.lower_quantized`).
    """
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from backends.tvm.control_flow import has_control_flow, lower_control_flow
    from backends.tvm.converters import extended_converters
    from backends.tvm.narrow_dtypes import lower_narrow_dtypes, needs_narrow_lowering
    from backends.tvm.panel_gemm import lower_float_matmuls
    from backends.tvm.quantized import QUANTIZED_OPS, lower_quantized

    if packed_kernels and any(node.op_type in QUANTIZED_OPS for node in model.graph):
        model = model.clone()  # tensors are shared, not copied; the caller's graph is untouched
        lower_quantized(model, int8_dot=int8_dot)
    if packed_kernels:  # float32 products on constant weights: our panel GEMM
        model = model.clone()
        lower_float_matmuls(model)
    if has_control_flow(model):  # If/Loop/Scan unrolled: TVM's importer has no converter
        model = model.clone()
        lower_control_flow(model)
    if needs_narrow_lowering(model):  # float8/float4/int4/int2 tensors as bytes, see the module
        model = model.clone()
        lower_narrow_dtypes(model)
    bad = unsupported_nodes(model)
    if bad:
        node = bad[0]
        op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        others = f" (and {len(bad) - 1} more unsupported nodes)" if len(bad) > 1 else ""
        raise BackendError(
            f"{model_name}: node {node.name!r} uses op {op}, which the TVM backend cannot compile"
            f"{others}"
        )
    initializer_names = set(model.graph.initializers)
    input_names = [v.name for v in model.graph.inputs if v.name not in initializer_names]
    proto, weight_names, weights = _proto_for_tvm(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with extended_converters():
                mod = from_onnx(proto, keep_params_in_input=True)
        except Exception as e:
            raise BackendError(f"{model_name}: TVM's ONNX importer failed: {_describe(e)}") from e
    mod, params = relax.frontend.detach_params(mod)
    main = mod["main"]
    if params.get("main"):  # every weight was handed over as an input
        raise BackendError(f"{model_name}: TVM's importer kept {len(params['main'])} weights")
    param_vars = list(main.params)[len(input_names) :]
    if len(param_vars) != len(weights):
        raise BackendError(
            f"{model_name}: TVM's importer produced {len(main.params)} parameters for "
            f"{len(input_names)} inputs and {len(weights)} weights"
        )
    return ImportedModule(mod, weight_names, weights, input_names)


def compile_model(
    model: ir.Model,
    target: str | dict[str, Any] = "llvm",
    *,
    model_name: str = "model",
    tuning_db: str | os.PathLike | None = None,
) -> CompiledModule:
    """Compiles ``model`` for ``target``; raises :class:`BackendError` naming the failing node.

    With ``tuning_db`` (a MetaSchedule JSON database folder written by ``compiler tune``), the
    kernels it has records for are scheduled from them; ``tuned_kernels`` counts them.
    """
    import tvm
    from tvm.target import codegen

    target_dict = resolve_target(target)
    # The packed quantized kernels are scheduled for CPUs; GPU schedules for them are not written.
    on_cpu = target_dict.get("kind") == "llvm"
    tvm_target = tvm.target.Target(target_dict)
    int8_dot = on_cpu and bool(codegen.target_has_features("avx512vnni", tvm_target))
    imported = import_relax(model, model_name=model_name, packed_kernels=on_cpu, int8_dot=int8_dot)
    database = None
    if tuning_db is not None:
        from backends.tvm.tuning import open_database

        database = open_database(tuning_db)
    stats: dict = {}
    try:
        pipeline = pipeline_for(tvm_target, database=database, stats=stats)
        executable = tvm.compile(imported.mod, tvm_target, relax_pipeline=pipeline)
    except Exception as e:
        raise BackendError(f"{model_name}: TVM compilation failed: {_describe(e)}") from e
    return CompiledModule(
        executable=executable,
        param_names=imported.param_names,
        params=imported.params,
        input_names=imported.input_names,
        target=target_dict,
        tuned_kernels=stats.get("tuned_kernels", 0),
    )


def _describe(e: Exception) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    # TVM errors end with the useful line after a C++ backtrace.
    message = lines[-1] if lines else type(e).__name__
    return message[:500]
