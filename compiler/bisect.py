"""``bisect``: the first pass whose outputs drift, the first node inside it, and a reproducer.

1. **Pass** — the pipeline runs with :class:`~compiler.instruments.NumericCheckInstrument`
   (onnxruntime after every pass on seeded inputs, against the input model). The first pass
   beyond its tolerance — the one it declares, else 1e-5; ``tolerance`` overrides both — is the
   culprit. A snapshot instrument keeps the model as it was before each pass (a clone, which
   shares the tensors) and the model the pass returned.
2. **Node** — the models before and after that pass run once more in onnxruntime on the same
   inputs with their intermediate values as extra outputs. Values are matched by name; the
   first node of the model before the pass (topological order) with an output that both models
   hold and that differs beyond the tolerance is where the drift starts: the values it reads
   still agree, or are constants.
3. **Reproducer** — that node alone, cut from the model *before* the pass: its constant inputs
   (initializers, ``Constant`` nodes) inside, its other inputs as graph inputs typed from the
   values observed in step 2, its outputs as graph outputs. The same pass is run on it (a new
   instance with the same options) to confirm that it drifts there too; with no pass it computes
   what the node computed.

Refused: the drift cannot be located when no value shared by both models differs (a pass that
renamed every value); nodes with subgraphs (``If``, ``Loop``) are cut without the outer-scope
values their bodies read.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from compiler.errors import CompilerError, NumericDriftError
from compiler.instruments import NumericCheckInstrument
from compiler.model_info import concrete_shape, signature
from compiler.numerics import max_error, normalized_error, random_inputs
from compiler.pass_manager import Instrument, PassManager
from compiler.pass_registry import PassRegistry, default_registry
from compiler.pipeline import build_passes, parse_pipeline

__all__ = ["BisectResult", "DriftingNode", "bisect", "extract_node"]


@dataclasses.dataclass
class DriftingNode:
    """The first node (of the model before the pass) whose output differs after the pass."""

    index: int
    name: str
    op_type: str
    domain: str
    output: str
    error: float

    @property
    def label(self) -> str:
        op = self.op_type if self.domain in ("", "ai.onnx") else f"{self.domain}::{self.op_type}"
        return f"{self.name or f'#{self.index}'!r} ({op})"


@dataclasses.dataclass
class BisectResult:
    """What bisect found. ``pass_name`` is None when no pass drifts."""

    passes: list[str]
    pass_name: str | None = None
    pass_index: int | None = None
    tolerance: float | None = None
    output_errors: dict[str, float] = dataclasses.field(default_factory=dict)
    largest: tuple[str, float] | None = None  # without drift: the pass with the largest error
    node: DriftingNode | None = None
    reproducer: Path | None = None
    reproducer_nodes: int = 0
    reproducer_error: float | None = None  # the same pass on the reproducer, on observed inputs


class _Snapshots(Instrument):
    """Keeps the model before the current pass and the model it returned."""

    def __init__(self) -> None:
        self.before: ir.Model | None = None
        self.after: ir.Model | None = None

    def before_pass(self, index, pass_, model) -> None:
        self.before = model.clone()

    def after_pass(self, index, pass_, result) -> None:
        self.after = result.model


def _seeded_inputs(
    model: ir.Model, seed: int, dims: Mapping[str, int] | None
) -> dict[str, np.ndarray]:
    specs, _ = signature(model)
    return random_inputs(
        [(s.name, np.dtype(s.dtype), concrete_shape(s, dims)) for s in specs], seed=seed
    )


def _node_output_names(model: ir.Model) -> list[str]:
    return [v.name for node in model.graph for v in node.outputs if v.name]


def _values(model: ir.Model, inputs: Mapping[str, np.ndarray], names: list[str]) -> dict:
    """The graph outputs and the named intermediate values of ``model`` on ``inputs``."""
    from backends.onnxruntime.reference import ReferenceSession

    # The session adds the values as graph outputs and removes them again; work on a clone.
    return ReferenceSession(model.clone(), extra_outputs=names).run(inputs)


def first_drifting_node(
    before: ir.Model, after: ir.Model, inputs: Mapping[str, np.ndarray], tolerance: float
) -> tuple[DriftingNode | None, dict[str, np.ndarray]]:
    """The first node of ``before`` whose output (matched by name in ``after``) drifts, and
    every value of ``before`` on ``inputs`` (the reproducer's inputs come from these)."""
    names_before = _node_output_names(before)
    in_after = set(_node_output_names(after))
    common = [name for name in names_before if name in in_after]
    observed = {**inputs, **_values(before, inputs, names_before)}
    changed = _values(after, inputs, common)
    for index, node in enumerate(before.graph):
        for value in node.outputs:
            if value.name not in in_after or value.name not in changed:
                continue
            error = normalized_error(changed[value.name], observed[value.name])
            if not error <= tolerance:
                return (
                    DriftingNode(
                        index, node.name or "", node.op_type, node.domain, value.name, error
                    ),
                    observed,
                )
    return None, observed


def _value_info(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    dtype = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(array).dtype)
    return onnx.helper.make_tensor_value_info(name, dtype, list(np.shape(array)))


def extract_node(model: ir.Model, index: int, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """Node ``index`` of ``model`` as a model of its own (see the module docstring, step 3).

    ``values``: arrays for the node's non-constant inputs and its outputs (their types).
    """
    from compiler.serialize import proto_with_weights

    proto = proto_with_weights(model)
    node = proto.graph.node[index]
    initializers = {t.name: t for t in proto.graph.initializer}
    constants = {
        out: n
        for n in proto.graph.node
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
        for out in n.output
    }
    inputs, weights, nodes = [], [], []
    for name in dict.fromkeys(node.input):  # unique, in order
        if not name:
            continue
        if name in initializers:
            weights.append(initializers[name])
        elif name in constants:
            nodes.append(constants[name])
        else:
            inputs.append(_value_info(name, values[name]))
    nodes.append(node)
    outputs = [_value_info(name, values[name]) for name in node.output if name]
    graph = onnx.helper.make_graph(
        nodes, f"reproducer_{node.name or index}", inputs, outputs, initializer=weights
    )
    repro = onnx.helper.make_model(
        graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version
    )
    repro.functions.extend(proto.functions)
    return repro


def _save_atomically(proto: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _drift_on_reproducer(
    repro: onnx.ModelProto, pass_: ir.passes.PassBase, values: Mapping[str, np.ndarray]
) -> float:
    """The worst output error the pass causes on the reproducer, on the observed inputs."""
    from backends.onnxruntime.reference import run_reference

    model = ir.serde.deserialize_model(repro)
    feeds = {i.name: values[i.name] for i in repro.graph.input}
    expected = run_reference(model, feeds)
    changed = PassManager([pass_]).run(model.clone()).model
    return max(max_error(run_reference(changed, feeds), expected).values(), default=0.0)


def bisect(
    source: str | Path | ir.Model,
    passes: str,
    *,
    tolerance: float | None = None,
    output: str | Path | None = None,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    registry: PassRegistry | None = None,
) -> BisectResult:
    """Finds the first pass of ``passes`` whose outputs drift on ``source`` and the first node
    inside it; writes the reproducer to ``output`` (when given and a node was found)."""
    from compiler.frontends import load

    registry = registry or default_registry()
    model = load(source) if not isinstance(source, ir.Model) else source.clone()
    specs = parse_pipeline(passes)
    pass_list = build_passes(specs, registry)
    result = BisectResult([str(s) for s in specs], tolerance=tolerance)
    inputs = _seeded_inputs(model, seed, dims)
    snapshots = _Snapshots()
    numeric = NumericCheckInstrument(inputs, tolerance=tolerance)
    try:
        PassManager(pass_list, [snapshots, numeric]).run(model)
    except NumericDriftError:
        pass
    else:
        worst = [
            (str(spec), max(record.errors.values(), default=0.0))
            for spec, record in zip(specs, numeric.records, strict=True)
        ]
        result.largest = max(worst, key=lambda item: item[1], default=None)
        return result
    index = len(numeric.records) - 1
    record = numeric.records[index]
    result.pass_name, result.pass_index = str(specs[index]), index
    result.tolerance, result.output_errors = record.tolerance, record.errors
    assert snapshots.before is not None and snapshots.after is not None
    node, observed = first_drifting_node(
        snapshots.before, snapshots.after, inputs, record.tolerance
    )
    result.node = node
    if node is None:
        return result
    repro = extract_node(snapshots.before, node.index, observed)
    result.reproducer_nodes = len(repro.graph.node)
    fresh = registry.create(specs[index].name, **specs[index].options)
    try:
        result.reproducer_error = _drift_on_reproducer(repro, fresh, observed)
    except CompilerError:
        result.reproducer_error = None  # the pass does not run on the node alone
    if output is not None:
        result.reproducer = Path(output)
        _save_atomically(repro, result.reproducer)
    return result


def describe(result: BisectResult) -> list[str]:
    """The lines the CLI prints for ``result``."""
    if result.pass_name is None:
        largest = (
            f" (largest: {result.largest[0]!r}, {result.largest[1]:.3g})" if result.largest else ""
        )
        limit = f"{result.tolerance:.3g}" if result.tolerance is not None else "each pass's"
        return [
            f"no pass drifts: all {len(result.passes)} passes stay within {limit} tolerance of "
            f"the input model{largest}"
        ]
    worst = max(result.output_errors, key=result.output_errors.get)
    lines = [
        f"first drifting pass: {result.pass_name!r} (pass {result.pass_index + 1} of "
        f"{len(result.passes)}): output {worst!r} differs from the input model by "
        f"{result.output_errors[worst]:.3g} (tolerance {result.tolerance:.3g})"
    ]
    node = result.node
    if node is None:
        lines.append(
            "no value that the models before and after the pass share differs: the drift "
            "cannot be located to a node (the pass renamed the values it changed)"
        )
        return lines
    lines.append(
        f"first drifting node: {node.label}, output {node.output!r} differs by {node.error:.3g}"
    )
    if result.reproducer_error is None:
        drift = f"{result.pass_name!r} does not run on it alone"
    elif result.reproducer_error <= result.tolerance:
        drift = (
            f"{result.pass_name!r} leaves it within tolerance ({result.reproducer_error:.3g}): "
            "the pass's change depends on the rest of the graph"
        )
    else:
        drift = f"{result.pass_name!r} on it drifts by {result.reproducer_error:.3g}"
    where = f"{result.reproducer}" if result.reproducer is not None else "not written"
    lines.append(f"reproducer: {where} ({result.reproducer_nodes} node(s)); {drift}")
    return lines
