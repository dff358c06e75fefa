"""Lowers ONNX control flow (``If``, ``Loop``, ``Scan``) to straight-line nodes before TVM import.

TVM's Relax ONNX importer has no converter for these ops, but our artifacts have static shapes,
so every trip count and sequence length is known when the model is compiled. Each op is replaced
in the main graph by copies of its body (``onnx_ir``'s cloner, outer-scope values kept):

* ``If``: a condition that is a constant, or folds to one (below), inlines the taken branch. A
  runtime condition inlines both branches and selects each output with ``Where(cond, then,
  else)`` — valid because ONNX ops have no side effects; it requires every branch output to be a
  tensor of the same dtype and static shape in both branches.
* ``Loop``: the trip count ``M`` and the initial condition must be constants, and the body's
  ``cond_out`` must fold to a constant at every iteration (it usually is ``Identity(cond_in)``).
  The body is copied once per iteration with the iteration number as a constant; loop-carried
  values are threaded through; each scan output is the per-iteration values stacked on a new
  axis 0 (``Unsqueeze`` + ``Concat``). Zero iterations give the initial values and empty scan
  outputs (their per-iteration shape must be static).
* ``Scan`` (opset 9+): the sequence length is the static size of the scan inputs' scan axis.
  Iteration ``t`` reads ``Gather(x, t, axis)`` (reversed for ``scan_input_directions`` 1) and
  scan outputs are stacked on ``scan_output_axes`` (reversed for ``scan_output_directions`` 1).
  Opset 8's ``Scan`` (batch axis 0, scan axis 1, ``directions``) is unrolled per batch element
  too; its ``sequence_lens`` must be absent or a constant equal to the full length.

"Folds to a constant": an initializer, a ``Constant``, ``Shape``/``Size`` of a value whose shape
is static, or any op (without subgraphs) whose inputs all fold, evaluated by onnx's reference
implementation (tensors up to :data:`FOLD_MAX_ELEMENTS` elements).

Unrolling copies the body per iteration, so trip counts above :data:`MAX_ITERATIONS` are
refused. A node that cannot be lowered raises :class:`BackendError` naming it and why; nested
control flow is lowered once the enclosing body has been inlined into the main graph.
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir import _cloner
from onnx_ir.passes.common import ShapeInferencePass

from compiler.errors import BackendError

__all__ = ["CONTROL_FLOW_OPS", "MAX_ITERATIONS", "has_control_flow", "lower_control_flow"]

CONTROL_FLOW_OPS = frozenset(["If", "Loop", "Scan"])
MAX_ITERATIONS = 4096  # body copies per node: beyond, the unrolled graph is unreasonably large
FOLD_MAX_ELEMENTS = 1 << 16
_MAX_LOWERINGS = 100_000  # nested bodies included; a guard against runaway expansion
# Ops without inputs that must not fold: each run draws new values.
_RANDOM_OPS = frozenset(
    [
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    ]
)


def has_control_flow(model: ir.Model) -> bool:
    """Whether the main graph has a node :func:`lower_control_flow` would replace."""
    return any(_is_control_flow(node) for node in model.graph)


def lower_control_flow(model: ir.Model) -> int:
    """Replaces every ``If``/``Loop``/``Scan`` of the main graph (in place); returns how many.

    Raises :class:`BackendError` naming the first node that cannot be lowered and why.
    """
    lowering = _Lowering(model)
    count = 0
    while True:
        node = next((n for n in model.graph if _is_control_flow(n)), None)
        if node is None:
            return count
        if count >= _MAX_LOWERINGS:
            raise BackendError(f"{_describe(node)}: more than {_MAX_LOWERINGS} nested lowerings")
        lowering.lower(node)
        count += 1


def _is_control_flow(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in CONTROL_FLOW_OPS


def _describe(node: ir.Node) -> str:
    return f"node {node.name!r} ({node.op_type})"


class _Lowering:
    """The state shared by the lowerings of one model: fresh names, folded constants, opset."""

    def __init__(self, model: ir.Model):
        self.model = model
        self.graph = model.graph
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        self._names = {v.name for v in _all_values(model.graph) if v.name}
        self._node_names = {n.name for n in ir.traversal.RecursiveGraphIterator(model.graph)}
        self._counter = itertools.count()
        self._folded: dict[ir.Value, np.ndarray | None] = {}
        self._lowered = 0  # nodes lowered so far: the graph's version for shape inference
        self._inferred_at = -1
        self._lifted: dict[ir.Value, ir.Value] = {}  # body initializers -> main-graph copies

    # -- names and new nodes ------------------------------------------------------------------

    def fresh(self, base: str) -> str:
        name = base or "v"
        while name in self._names:
            name = f"{base}_{next(self._counter)}"
        self._names.add(name)
        return name

    def node(self, op_type: str, inputs, attributes=None, *, base: str) -> ir.Node:
        """A new single-output node whose output gets a fresh name built from ``base``."""
        node = ir.Node("", op_type, inputs, ir.convenience.convert_attributes(attributes or {}))
        node.outputs[0].name = self.fresh(base)
        node.name = self._fresh_node_name(f"{base}_{op_type}")
        return node

    def constant(self, array: np.ndarray, *, base: str) -> ir.Node:
        node = self.node("Constant", [], {"value": ir.tensor(array)}, base=base)
        node.outputs[0].const_value = ir.tensor(array)
        self._folded[node.outputs[0]] = array
        return node

    def _fresh_node_name(self, base: str) -> str:
        name = base
        while name in self._node_names:
            name = f"{base}_{next(self._counter)}"
        self._node_names.add(name)
        return name

    def clone_body(
        self, body: ir.Graph, bindings: dict[ir.Value, ir.Value], suffix: str
    ) -> tuple[list[ir.Node], list[ir.Value]]:
        """Copies of ``body``'s nodes with its inputs bound; returns them and the outputs."""
        value_map: dict[ir.Value, ir.Value | None] = dict(bindings)
        for init in body.initializers.values():
            value_map[init] = self._lift_initializer(init)

        def rename(node: ir.Node) -> None:
            node.name = self._fresh_node_name(f"{node.name or node.op_type}{suffix}")
            for output in node.outputs:
                if output.name:
                    output.name = self.fresh(f"{output.name}{suffix}")

        cloner = _cloner.Cloner(
            attr_map={},
            value_map=value_map,
            metadata_props={},
            post_process=rename,
            allow_outer_scope_values=True,
        )
        nodes = [cloner.clone_node(node) for node in body]
        outputs = [value_map.get(v, v) for v in body.outputs]  # an outer value maps to itself
        return nodes, outputs

    def _lift_initializer(self, init: ir.Value) -> ir.Value:
        if init not in self._lifted:
            value = ir.Value(
                name=self.fresh(init.name or "init"),
                type=init.type,
                shape=init.shape,
                const_value=init.const_value,
            )
            self.graph.register_initializer(value)
            self._lifted[init] = value
        return self._lifted[init]

    # -- shapes and constants -----------------------------------------------------------------

    def static_shape(self, value: ir.Value) -> tuple[int, ...] | None:
        """``value``'s static shape, running onnx's shape inference (with data propagation,
        which follows Shape -> Concat -> Reshape) when the graph changed since it last ran."""
        known = value.shape is not None and value.shape.is_static()
        if not known and self._inferred_at != self._lowered:
            ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(self.model)
            self._inferred_at = self._lowered
            # Shapes may have become static: what did not fold may fold now.
            self._folded = {k: v for k, v in self._folded.items() if v is not None}
        if value.shape is None or not value.shape.is_static():
            return None
        return tuple(int(d) for d in value.shape)

    def fold(self, value: ir.Value | None) -> np.ndarray | None:
        """``value`` as a numpy array when it is constant at compile time, else None."""
        if value is None:
            return None
        if value not in self._folded:
            self._folded[value] = self._fold(value)
        return self._folded[value]

    def _fold(self, value: ir.Value) -> np.ndarray | None:
        if value.const_value is not None:
            return value.const_value.numpy()
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx") or node.op_type in _RANDOM_OPS:
            return None
        if node.op_type in ("Shape", "Size"):
            return _static_shape_op(node, self.static_shape(node.inputs[0]))
        if any(
            a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for a in node.attributes.values()
        ):
            return None
        arrays = [None if v is None else self.fold(v) for v in node.inputs]
        if any(a is None for v, a in zip(node.inputs, arrays, strict=True) if v is not None):
            return None
        if sum(a.size for a in arrays if a is not None) > FOLD_MAX_ELEMENTS:
            return None
        results = _evaluate(node, arrays, self.opset)
        if results is None:
            return None
        for output, result in zip(node.outputs, results, strict=False):
            self._folded[output] = result
        return self._folded.get(value)

    # -- the lowerings ------------------------------------------------------------------------

    def lower(self, node: ir.Node) -> None:
        lower = {"If": self._lower_if, "Loop": self._lower_loop, "Scan": self._lower_scan}
        nodes, outputs = lower[node.op_type](node)
        self._lowered += 1
        # Each result leaves through an Identity of its own: results may be graph inputs, outer
        # values or one value twice, which cannot take the replaced outputs' names.
        finals = []
        for old, new in zip(node.outputs, outputs, strict=True):
            identity = self.node("Identity", [new], base=f"{old.name}_lowered")
            nodes.append(identity)
            finals.append(identity.outputs[0])
        used = [(old, new) for old, new in zip(node.outputs, finals, strict=True)]
        for old, new in used:
            new.type = old.type if old.type is not None else new.type
            new.shape = old.shape if old.shape is not None else new.shape
        self.graph.insert_before(node, nodes)
        ir.convenience.replace_all_uses_with(
            [old for old, _ in used], [new for _, new in used], replace_graph_outputs=True
        )
        self.graph.remove(node, safe=True)
        for old, new in used:  # the old names are free now: keep the graph's output names
            self._names.discard(new.name)
            new.name = old.name

    def _lower_if(self, node: ir.Node) -> tuple[list[ir.Node], list[ir.Value]]:
        then_branch = node.attributes["then_branch"].as_graph()
        else_branch = node.attributes["else_branch"].as_graph()
        cond = self.fold(node.inputs[0])
        if cond is not None:
            taken = then_branch if bool(np.asarray(cond).reshape(-1)[0]) else else_branch
            return self.clone_body(taken, {}, suffix="")
        for then_out, else_out in zip(then_branch.outputs, else_branch.outputs, strict=True):
            if not _same_static_tensor(then_out, else_out):
                raise BackendError(
                    f"{_describe(node)}: the condition is a runtime value and the branch outputs "
                    f"{then_out.name!r} ({then_out.type}, {then_out.shape}) and {else_out.name!r} "
                    f"({else_out.type}, {else_out.shape}) are not tensors of one static shape"
                )
        then_nodes, then_outs = self.clone_body(then_branch, {}, suffix="_then")
        else_nodes, else_outs = self.clone_body(else_branch, {}, suffix="_else")
        nodes = [*then_nodes, *else_nodes]
        condition = node.inputs[0]
        if condition.shape is None or condition.shape.rank() != 0:
            scalar = self.constant(np.zeros((0,), dtype=np.int64), base=f"{node.name}_scalar")
            reshape = self.node("Reshape", [condition, scalar.outputs[0]], base="if_cond")
            nodes += [scalar, reshape]
            condition = reshape.outputs[0]
        outputs = []
        for then_out, else_out in zip(then_outs, else_outs, strict=True):
            where = self.node("Where", [condition, then_out, else_out], base="if_select")
            nodes.append(where)
            outputs.append(where.outputs[0])
        return nodes, outputs

    def _lower_loop(self, node: ir.Node) -> tuple[list[ir.Node], list[ir.Value]]:
        body = node.attributes["body"].as_graph()
        trip_input, cond_input = node.inputs[0], node.inputs[1]
        trips = None
        if trip_input is not None:
            trips = self.fold(trip_input)
            if trips is None:
                raise BackendError(f"{_describe(node)}: the trip count M is not a constant")
            trips = int(np.asarray(trips).reshape(-1)[0])
        running = True
        if cond_input is not None:
            cond = self.fold(cond_input)
            if cond is None:
                raise BackendError(f"{_describe(node)}: the initial condition is not a constant")
            running = bool(np.asarray(cond).reshape(-1)[0])
        carried = list(node.inputs[2:])
        iteration_in, cond_in, *carried_in = body.inputs
        cond_out, *rest = body.outputs
        scan_out = rest[len(carried) :]
        nodes: list[ir.Node] = []
        scans: list[list[ir.Value]] = [[] for _ in scan_out]
        step = 0
        while running and (trips is None or step < trips):
            if step >= MAX_ITERATIONS:
                raise BackendError(f"{_describe(node)}: more than {MAX_ITERATIONS} iterations")
            iteration = self.constant(np.array(step, dtype=np.int64), base=f"{node.name}_iter")
            cond_value = self.constant(np.array(True), base=f"{node.name}_cond")
            nodes += [iteration, cond_value]
            bindings = {iteration_in: iteration.outputs[0], cond_in: cond_value.outputs[0]}
            bindings.update(zip(carried_in, carried, strict=True))
            step_nodes, outputs = self.clone_body(body, bindings, suffix=f"_{step}")
            nodes += step_nodes
            new_cond, *values = outputs
            carried = values[: len(carried)]
            for k, value in enumerate(values[len(carried) :]):
                scans[k].append(value)
            folded = self.fold(new_cond)
            if folded is None:
                raise BackendError(
                    f"{_describe(node)}: the body's condition output {cond_out.name!r} is not a "
                    f"constant at iteration {step}"
                )
            running = bool(np.asarray(folded).reshape(-1)[0])
            step += 1
        outputs = list(carried)
        for per_step, formal in zip(scans, scan_out, strict=True):
            stacked, stack_nodes = self._stack(per_step, 0, formal, node)
            nodes += stack_nodes
            outputs.append(stacked)
        return nodes, outputs

    def _lower_scan(self, node: ir.Node) -> tuple[list[ir.Node], list[ir.Value]]:
        if self.opset < 9:
            return self._lower_scan_v8(node)
        body = node.attributes["body"].as_graph()
        num_scan_inputs = node.attributes["num_scan_inputs"].as_int()
        states = list(node.inputs[: len(node.inputs) - num_scan_inputs])
        xs = list(node.inputs[len(states) :])
        input_axes = _ints(node, "scan_input_axes", [0] * len(xs))
        input_dirs = _ints(node, "scan_input_directions", [0] * len(xs))
        num_scan_outputs = len(node.outputs) - len(states)
        output_axes = _ints(node, "scan_output_axes", [0] * num_scan_outputs)
        output_dirs = _ints(node, "scan_output_directions", [0] * num_scan_outputs)
        lengths, axes = set(), []
        for x, axis in zip(xs, input_axes, strict=True):
            shape = self.static_shape(x)
            if shape is None:
                raise BackendError(f"{_describe(node)}: scan input {x.name!r} has no static shape")
            axis = axis + len(shape) if axis < 0 else axis
            axes.append(axis)
            lengths.add(shape[axis])
        if len(lengths) != 1:
            raise BackendError(f"{_describe(node)}: scan inputs have lengths {sorted(lengths)}")
        return self._unroll_scan(
            node, body, states, xs, axes, lengths.pop(), input_dirs, output_axes, output_dirs
        )

    def _unroll_scan(
        self, node, body, states, xs, axes, length, input_dirs, output_axes, output_dirs
    ) -> tuple[list[ir.Node], list[ir.Value]]:
        """The body once per step ``t`` < ``length`` on ``Gather(x, t, axis)`` of each input."""
        if length > MAX_ITERATIONS:
            raise BackendError(f"{_describe(node)}: more than {MAX_ITERATIONS} iterations")
        n_states = len(states)
        nodes: list[ir.Node] = []
        scans: list[list[ir.Value]] = [[] for _ in output_axes]
        for step in range(length):
            bindings = dict(zip(body.inputs[:n_states], states, strict=True))
            for x, axis, direction, formal in zip(
                xs, axes, input_dirs, body.inputs[n_states:], strict=True
            ):
                index = length - 1 - step if direction else step
                position = self.constant(np.array(index, dtype=np.int64), base=f"{node.name}_t")
                gather = self.node(
                    "Gather", [x, position.outputs[0]], {"axis": axis}, base=f"{x.name}_step"
                )
                nodes += [position, gather]
                bindings[formal] = gather.outputs[0]
            step_nodes, outputs = self.clone_body(body, bindings, suffix=f"_{step}")
            nodes += step_nodes
            states = outputs[:n_states]
            for k, value in enumerate(outputs[n_states:]):
                scans[k].append(value)
        outputs = list(states)
        for per_step, axis, direction, formal in zip(
            scans, output_axes, output_dirs, body.outputs[n_states:], strict=True
        ):
            stacked, stack_nodes = self._stack(
                per_step[::-1] if direction else per_step, axis, formal, node
            )
            nodes += stack_nodes
            outputs.append(stacked)
        return nodes, outputs

    def _lower_scan_v8(self, node: ir.Node) -> tuple[list[ir.Node], list[ir.Value]]:
        """Opset 8: inputs are (batch, sequence, ...); each batch element scans on its own."""
        body = node.attributes["body"].as_graph()
        num_scan_inputs = node.attributes["num_scan_inputs"].as_int()
        lengths, inputs = node.inputs[0], list(node.inputs[1:])
        states = inputs[: len(inputs) - num_scan_inputs]
        xs = inputs[len(states) :]
        directions = _ints(node, "directions", [0] * len(xs))
        shape = self.static_shape(xs[0]) if xs else None
        if shape is None:
            raise BackendError(f"{_describe(node)}: the scan inputs have no static shape")
        batch, full = shape[0], shape[1]
        if lengths is not None:
            given = self.fold(lengths)
            if given is None or not np.all(np.asarray(given) == full):
                raise BackendError(
                    f"{_describe(node)}: sequence_lens must be absent or constant {full}"
                )
        nodes: list[ir.Node] = []
        per_batch: list[list[ir.Value]] = [[] for _ in node.outputs]
        for b in range(batch):
            index = self.constant(np.array(b, dtype=np.int64), base=f"{node.name}_batch")
            nodes.append(index)
            sliced = []
            for value in [*states, *xs]:
                gather = self.node(
                    "Gather", [value, index.outputs[0]], {"axis": 0}, base=f"{value.name}_b{b}"
                )
                nodes.append(gather)
                sliced.append(gather.outputs[0])
            n_outputs = len(node.outputs) - len(states)
            step_nodes, outputs = self._unroll_scan(
                node,
                body,
                sliced[: len(states)],
                sliced[len(states) :],
                [0] * len(xs),
                full,
                directions,
                [0] * n_outputs,
                [0] * n_outputs,
            )
            nodes += step_nodes
            for k, value in enumerate(outputs):
                per_batch[k].append(value)
        outputs = []
        for values, formal in zip(per_batch, node.outputs, strict=True):
            stacked, stack_nodes = self._stack(values, 0, formal, node)
            nodes += stack_nodes
            outputs.append(stacked)
        return nodes, outputs

    def _stack(
        self, values: list[ir.Value], axis: int, formal: ir.Value, node: ir.Node
    ) -> tuple[ir.Value, list[ir.Node]]:
        """``values`` stacked on a new ``axis`` (negative: counted from the stacked rank); none
        stack to an empty tensor shaped as ``formal`` (the body output) with ``axis`` of 0."""
        if not values:
            shape = self.static_shape(formal)
            if shape is None or formal.dtype is None:
                raise BackendError(
                    f"{_describe(node)}: zero iterations, and scan output {formal.name!r} has "
                    f"no static shape to make empty"
                )
            dims = list(shape)
            axis = axis + len(dims) + 1 if axis < 0 else axis
            dims.insert(axis, 0)
            empty = self.constant(
                np.zeros(dims, dtype=formal.dtype.numpy()), base=f"{formal.name}_empty"
            )
            return empty.outputs[0], [empty]
        nodes = []
        expanded = []
        for value in values:
            unsqueeze = self._unsqueeze(value, axis)
            nodes += unsqueeze
            expanded.append(unsqueeze[-1].outputs[0])
        if len(expanded) == 1:
            return expanded[0], nodes
        concat = self.node("Concat", expanded, {"axis": axis}, base=f"{formal.name}_stacked")
        nodes.append(concat)
        return concat.outputs[0], nodes

    def _unsqueeze(self, value: ir.Value, axis: int) -> list[ir.Node]:
        """``Unsqueeze`` in the model's opset: axes an input from opset 13, an attribute before."""
        if self.opset >= 13:
            axes = self.constant(np.array([axis], dtype=np.int64), base="axes")
            return [axes, self.node("Unsqueeze", [value, axes.outputs[0]], base="unsqueezed")]
        return [self.node("Unsqueeze", [value], {"axes": [axis]}, base="unsqueezed")]


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else default


def _same_static_tensor(a: ir.Value, b: ir.Value) -> bool:
    return (
        isinstance(a.type, ir.TensorType)
        and a.type == b.type
        and a.shape is not None
        and b.shape is not None
        and a.shape.is_static()
        and tuple(a.shape) == tuple(b.shape)
    )


def _static_shape_op(node: ir.Node, shape: tuple[int, ...] | None) -> np.ndarray | None:
    """``Shape``/``Size`` of a value whose shape is ``shape`` (None: not static)."""
    if shape is None:
        return None
    dims = list(shape)
    if node.op_type == "Size":
        return np.array(int(np.prod(dims)), dtype=np.int64)
    start_attr, end_attr = node.attributes.get("start"), node.attributes.get("end")
    start = start_attr.as_int() if start_attr is not None else 0
    end = end_attr.as_int() if end_attr is not None else len(dims)
    return np.array(dims[slice(start, end)], dtype=np.int64)


def _evaluate(node: ir.Node, arrays: list[np.ndarray | None], opset: int):
    """``node`` on constant inputs, by onnx's reference implementation; None if it cannot."""
    from onnx.reference import ReferenceEvaluator

    names = ["" if a is None else f"in{i}" for i, a in enumerate(arrays)]
    outputs = [f"out{i}" for i in range(len(node.outputs))]
    proto = ir.serde.serialize_node(node)
    del proto.input[:], proto.output[:]
    proto.input.extend(names)
    proto.output.extend(outputs)
    graph = onnx.helper.make_graph(
        [proto],
        "fold",
        [
            onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape
            )
            for name, a in zip(names, arrays, strict=True)
            if a is not None
        ],
        [onnx.helper.make_tensor_value_info(name, 0, None) for name in outputs],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    feeds = {name: a for name, a in zip(names, arrays, strict=True) if a is not None}
    with contextlib.suppress(Exception):  # what the reference cannot evaluate stays a node
        return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]
    return None


def _all_values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in ir.traversal.RecursiveGraphIterator(graph):
        yield from node.outputs
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from attr.as_graph().inputs
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.as_graphs():
                    yield from sub.inputs
