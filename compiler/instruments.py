"""Instruments for :class:`compiler.pass_manager.PassManager`.

* :class:`VerifyInstrument` — after every pass: the ONNX checker and topological order.
* :class:`TimingInstrument` — wall time of every pass.
* :class:`StatsInstrument` — nodes, ops and parameter bytes after every pass (for the report).
* :class:`DumpInstrument` — writes the model after every pass into a folder (open in Netron).
* :class:`NumericCheckInstrument` — runs the reference runtime (onnxruntime) before the first pass
  and after each one, and names the first pass whose outputs drift beyond its tolerance.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from compiler.errors import CompilerError, NumericDriftError
from compiler.model_info import ModelStats, model_stats
from compiler.numerics import max_error
from compiler.pass_manager import Instrument, pass_name

__all__ = [
    "DEFAULT_TOLERANCE",
    "DumpInstrument",
    "NumericCheckInstrument",
    "StatsInstrument",
    "TimingInstrument",
    "VerifyInstrument",
    "check_topological_order",
]

# Normalized max error allowed for a pass that declares no tolerance: lossless rewrites only
# reorder float arithmetic.
DEFAULT_TOLERANCE = 1e-5


class VerifyError(CompilerError):
    """The model is invalid after a pass."""


def check_topological_order(graph: ir.Graph) -> None:
    """Raises :class:`VerifyError` if a node uses a value produced by a later node."""
    available = {id(v) for v in graph.inputs}
    available.update(id(v) for v in graph.initializers.values())
    produced_by_graph = {id(out) for node in graph for out in node.outputs}
    for node in graph:
        for value in node.inputs:
            if value is None or id(value) in available:
                continue
            if id(value) in produced_by_graph:
                raise VerifyError(
                    f"node {node.name!r} ({node.op_type}) uses {value.name!r} before the node "
                    "that produces it: the graph is not in topological order"
                )
            # Otherwise the value comes from an outer scope (subgraphs) or is a graph input.
        available.update(id(out) for out in node.outputs)


def _checker_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto for the checker, weights replaced by declared inputs.

    The checker cannot read external data from an in-memory proto, and weight bytes do not
    affect what it checks, so initializers become typed graph inputs.
    """
    proto = ir.to_proto(model)
    graph_inputs = {i.name for i in proto.graph.input}
    for tensor in proto.graph.initializer:
        if tensor.name not in graph_inputs:
            proto.graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
    del proto.graph.initializer[:]
    if not proto.graph.name:
        proto.graph.name = "main"
    return proto


class VerifyInstrument(Instrument):
    """Checks the model before the first pass and after every pass."""

    def __init__(self, *, checker: bool = True) -> None:
        self.checker = checker

    def _verify(self, model: ir.Model, when: str) -> None:
        check_topological_order(model.graph)
        if self.checker:
            try:
                onnx.checker.check_model(_checker_proto(model))
            except onnx.checker.ValidationError as e:
                first = str(e).strip().splitlines()[0]
                raise VerifyError(f"the ONNX checker rejects the model {when}: {first}") from e

    def before_pipeline(self, model: ir.Model) -> None:
        self._verify(model, "before the first pass")

    def after_pass(self, index, pass_, result) -> None:
        self._verify(result.model, f"after pass {pass_name(pass_)!r}")


class TimingInstrument(Instrument):
    """Records the wall time of every pass as ``(name, seconds)`` in ``self.timings``."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []
        self._start = 0.0

    def before_pass(self, index, pass_, model) -> None:
        self._start = time.perf_counter()

    def after_pass(self, index, pass_, result) -> None:
        self.timings.append((pass_name(pass_), time.perf_counter() - self._start))


class StatsInstrument(Instrument):
    """Records :class:`ModelStats` of the input and after every pass."""

    def __init__(self) -> None:
        self.before: ModelStats | None = None
        self.after: list[tuple[str, bool, ModelStats]] = []

    def before_pipeline(self, model) -> None:
        self.before = model_stats(model)

    def after_pass(self, index, pass_, result) -> None:
        self.after.append((pass_name(pass_), result.modified, model_stats(result.model)))


class DumpInstrument(Instrument):
    """Writes ``00-input.onnx``, ``01-<pass>.onnx``, … into ``directory``.

    ``only`` limits the dumps to the named passes (the input is always written).
    """

    def __init__(self, directory: str | Path, *, only: set[str] | None = None) -> None:
        self.directory = Path(directory)
        self.only = only
        self.written: list[Path] = []

    def _dump(self, model: ir.Model, index: int, name: str) -> None:
        from backends.onnxruntime.writer import save_model

        self.directory.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        self.written.extend(save_model(model, self.directory / f"{index:02d}-{safe}.onnx"))

    def before_pipeline(self, model) -> None:
        self._dump(model, 0, "input")

    def after_pass(self, index, pass_, result) -> None:
        name = pass_name(pass_)
        if self.only is None or name in self.only:
            self._dump(result.model, index + 1, name)


@dataclasses.dataclass
class NumericRecord:
    pass_name: str
    errors: dict[str, float]
    tolerance: float


class NumericCheckInstrument(Instrument):
    """Compares the reference runtime's outputs after every pass with those of the input model.

    A pass may declare ``tolerance`` (normalized max error, see :mod:`compiler.numerics`); others
    get ``default_tolerance``; ``tolerance``, when given, applies to every pass instead. The
    first pass beyond its tolerance raises :class:`NumericDriftError` naming it and the output.
    """

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        default_tolerance: float = DEFAULT_TOLERANCE,
        tolerance: float | None = None,
    ) -> None:
        self.inputs = dict(inputs)
        self.default_tolerance = default_tolerance
        self.tolerance = tolerance
        self.reference: dict[str, np.ndarray] = {}
        self.records: list[NumericRecord] = []

    @staticmethod
    def _run(model: ir.Model, inputs) -> dict[str, np.ndarray]:
        from backends.onnxruntime.reference import run_reference

        return run_reference(model, inputs)

    def tolerance_of(self, pass_: ir.passes.PassBase) -> float:
        if self.tolerance is not None:
            return self.tolerance
        return float(getattr(pass_, "tolerance", self.default_tolerance))

    def before_pipeline(self, model) -> None:
        self.reference = self._run(model, self.inputs)

    def after_pass(self, index, pass_, result) -> None:
        name = pass_name(pass_)
        tolerance = self.tolerance_of(pass_)
        errors = max_error(self._run(result.model, self.inputs), self.reference)
        self.records.append(NumericRecord(name, errors, tolerance))
        worst = max(errors, key=errors.get) if errors else None
        if worst is not None and not errors[worst] <= tolerance:
            raise NumericDriftError(
                f"pass {name!r} changed output {worst!r} by a normalized error of "
                f"{errors[worst]:.3g}, above its tolerance {tolerance:.3g}",
                pass_name=name,
                passes_before=[r.pass_name for r in self.records[:-1]],
            )
