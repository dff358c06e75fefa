"""onnxruntime as the reference for numeric checks.

Graph optimizations are limited to BASIC (constant folding, redundant-node removal): at EXTENDED
and above onnxruntime rewrites ``DequantizeLinear + MatMul`` into a ``MatMulNBits`` that also
quantizes activations, which would make the reference itself inexact (TVM_NOTES.md).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from compiler.errors import BackendError
from compiler.serialize import proto_with_weights

__all__ = ["ReferenceSession", "run_reference"]

# Above this many bytes of weights the model goes through a temporary file with external data
# (a serialized ModelProto cannot exceed 2 GiB).
_IN_MEMORY_LIMIT = 1 << 30

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(threads: int | None = None, level: str = "basic") -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[level]
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class ReferenceSession:
    """An onnxruntime session over an ``onnx_ir.Model`` or an ``.onnx`` path (CPU provider)."""

    def __init__(
        self,
        model: ir.Model | str | Path,
        *,
        threads: int | None = None,
        level: str = "basic",
        extra_outputs: list[str] | None = None,
    ) -> None:
        """``extra_outputs`` names intermediate values of an ``ir.Model`` to return as well."""
        options = session_options(threads, level)
        added: list[ir.Value] = []
        if extra_outputs:
            if not isinstance(model, ir.Model):
                raise TypeError("extra_outputs needs an onnx_ir.Model")
            added = _expose(model, extra_outputs)
        try:
            if isinstance(model, (str, Path)):
                self._session = ort.InferenceSession(
                    str(model), options, providers=["CPUExecutionProvider"]
                )
            elif _weight_bytes(model) < _IN_MEMORY_LIMIT:
                data = proto_with_weights(model).SerializeToString()
                self._session = ort.InferenceSession(
                    data, options, providers=["CPUExecutionProvider"]
                )
            else:
                with tempfile.TemporaryDirectory(prefix="compiler-ref-") as tmp:
                    path = Path(tmp) / "model.onnx"
                    ir.save(model, path, external_data="model.onnx.data")
                    self._session = ort.InferenceSession(
                        str(path), options, providers=["CPUExecutionProvider"]
                    )
        except Exception as e:
            raise BackendError(f"onnxruntime cannot load the model: {_first_line(e)}") from e
        finally:
            for value in added:
                model.graph.outputs.remove(value)
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {name: inputs[name] for name in self.input_names if name in inputs}
        try:
            outputs = self._session.run(None, feeds)
        except Exception as e:
            raise BackendError(f"onnxruntime failed to run the model: {_first_line(e)}") from e
        return dict(zip(self.output_names, outputs, strict=True))


def _expose(model: ir.Model, names: list[str]) -> list[ir.Value]:
    """Appends the named values to the graph outputs (the caller removes them again)."""
    present = {v.name for v in model.graph.outputs}
    wanted = set(names) - present
    found = {}
    for node in model.graph:
        for value in node.outputs:
            if value.name in wanted:
                found[value.name] = value
    for value in model.graph.inputs:
        if value.name in wanted:
            found[value.name] = value
    missing = wanted - set(found)
    if missing:
        raise BackendError(f"no values named {sorted(missing)} in the model")
    added = [found[name] for name in names if name in found]
    model.graph.outputs.extend(added)
    return added


def run_reference(
    model: ir.Model | str | Path, inputs: Mapping[str, np.ndarray], **options
) -> dict[str, np.ndarray]:
    """Runs ``model`` once in onnxruntime and returns its outputs by name."""
    return ReferenceSession(model, **options).run(inputs)


def _weight_bytes(model: ir.Model) -> int:
    return sum(
        v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None
    )


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
