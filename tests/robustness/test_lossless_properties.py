"""Property: every lossless pass keeps a random small graph's outputs (hypothesis).

Graphs are drawn step by step from a pool of values with known shapes, starting from one input
``x: float[B, N]``: elementwise chains (Relu, Neg, Abs, Tanh, Sigmoid, Softmax, Identity chains),
Add/Sub/Mul with another value or with a constant (an initializer, a ``Constant`` node, or a
constant subgraph that folding collapses), MatMul with a weight, Reshape (with ``-1``),
Transpose, Concat, duplicated subexpressions (a node repeated on the same inputs, for CSE),
duplicated initializers (for dedup), and dead nodes. One or two values become outputs.

Each lossless pass of the registry (built-in passes without ``lossy = True``; plugins are left
out so the set is the same on every machine) runs alone on a clone of the graph, and all of them
in sequence on another, and onnxruntime runs both the result and the unmodified graph on the
same seeded inputs. The outputs (same names, same shapes) must agree within a normalized max
error of ``TOLERANCE`` (fp32: constant folding and fusion reassociate), or the pass's declared
``tolerance`` where it declares one. The ``modified`` flag is not checked here (the per-pass
tests do that).

Found by this test and fixed: ``eliminate-identity`` (and so ``cleanup``, the default pipeline
O1) dropped a graph output when an ``Identity``'s input was itself a graph output;
``test_identity_of_a_graph_output_keeps_both_outputs`` keeps it fixed.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compiler.accuracy import is_lossy
from compiler.pass_registry import default_registry
from tests.helpers import assert_same_outputs, model_from_text

TOLERANCE = 1e-5
EXAMPLES = 25  # per pass; each example is two onnxruntime sessions and one pass

UNARY = ("Relu", "Neg", "Abs", "Tanh", "Sigmoid", "Identity", "Softmax")
BINARY = ("Add", "Sub", "Mul")


def _lossless_passes() -> list[str]:
    return sorted(
        info.name
        for info in default_registry()
        if info.origin == "builtin" and not is_lossy(info.cls)
    )


LOSSLESS = _lossless_passes()


def _options(name: str, model: ir.Model) -> dict:
    """``partition`` needs at least as many nodes as stages (asking for more is an error)."""
    return {"stages": min(2, max(1, len(model.graph)))} if name == "partition" else {}


IDENTITY_PASSES = ("cleanup", "eliminate-identity")


class _Graph:
    """Builds an ONNX graph from drawn steps; ``pool`` holds (name, shape) of usable values."""

    def __init__(self, batch: int, width: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.pool: list[tuple[str, tuple[int, ...]]] = [("x", (batch, width))]
        self.count = 0
        self.rng = np.random.default_rng(0)

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"n_{out}", **attrs))
        self.pool.append((out, shape))
        return out

    def weight(self, shape: tuple[int, ...], scale: float = 0.5) -> str:
        name = self.name("w")
        array = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, values: list[int]) -> str:
        name = self.name("shape")
        self.inits.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name


def _factor_shapes(total: int) -> list[tuple[int, ...]]:
    shapes = [(total,)]
    for a in range(1, total + 1):
        if total % a == 0:
            shapes.append((a, total // a))
            for b in range(1, total // a + 1):
                if (total // a) % b == 0:
                    shapes.append((a, b, total // a // b))
    return shapes


@st.composite
def graphs(draw) -> ir.Model:
    g = _Graph(draw(st.sampled_from((1, 2, 3))), draw(st.sampled_from((2, 4, 6))))
    for _ in range(draw(st.integers(1, 8))):
        value, shape = draw(st.sampled_from(g.pool))
        kind = draw(
            st.sampled_from(
                (
                    "unary",
                    "identity-chain",
                    "binary-pool",
                    "binary-const",
                    "const-subgraph",
                    "matmul",
                    "reshape",
                    "transpose",
                    "concat",
                    "duplicate",
                    "dup-init",
                    "dead",
                )
            )
        )
        if kind == "unary":
            op = draw(st.sampled_from(UNARY))
            g.node(op, [value], shape, **({"axis": -1} if op == "Softmax" else {}))
        elif kind == "identity-chain":
            for _ in range(draw(st.integers(1, 3))):
                value = g.node("Identity", [value], shape)
        elif kind == "binary-pool":
            same = [name for name, s in g.pool if s == shape]
            g.node(draw(st.sampled_from(BINARY)), [value, draw(st.sampled_from(same))], shape)
        elif kind == "binary-const":
            const_shape = shape[-1:] if draw(st.booleans()) else shape  # broadcast, or full
            g.node(draw(st.sampled_from(BINARY)), [g.weight(const_shape), value], shape)
        elif kind == "const-subgraph":
            # Constant -> Mul -> Add -> Identity: foldable into one constant.
            const = g.name("const")
            g.nodes.append(
                helper.make_node(
                    "Constant",
                    [],
                    [const],
                    value=numpy_helper.from_array(np.full(shape[-1:], 0.5, np.float32)),
                )
            )
            scaled = g.node("Mul", [const, g.weight(shape[-1:])], shape[-1:])
            summed = g.node("Add", [scaled, const], shape[-1:])
            g.node(draw(st.sampled_from(BINARY)), [value, summed], shape)
        elif kind == "matmul":
            width = draw(st.sampled_from((2, 4, 8)))
            g.node("MatMul", [value, g.weight((shape[-1], width))], (*shape[:-1], width))
        elif kind == "reshape":
            target = draw(st.sampled_from(_factor_shapes(int(np.prod(shape)))))
            dims = list(target)
            if draw(st.booleans()):
                dims[draw(st.integers(0, len(dims) - 1))] = -1
            g.node("Reshape", [value, g.ints(dims)], target)
        elif kind == "transpose":
            perm = draw(st.permutations(range(len(shape))))
            g.node("Transpose", [value], tuple(shape[p] for p in perm), perm=list(perm))
        elif kind == "concat":
            axis = draw(st.integers(0, len(shape) - 1))
            other = draw(st.sampled_from([name for name, s in g.pool if s == shape]))
            out_shape = tuple(d * 2 if i == axis else d for i, d in enumerate(shape))
            g.node("Concat", [value, other], out_shape, axis=axis)
        elif kind == "duplicate":
            # The same subexpression twice, both used: CSE merges them.
            op = draw(st.sampled_from(("Relu", "Tanh", "Neg")))
            first = g.node(op, [value], shape)
            second = g.node(op, [value], shape)
            g.node("Add", [first, second], shape)
        elif kind == "dup-init":
            # Two initializers with the same content under different names: dedup merges them.
            array = np.full(shape[-1:], 0.25, np.float32)
            a, b = g.name("same"), g.name("same")
            g.inits += [numpy_helper.from_array(array, a), numpy_helper.from_array(array, b)]
            left = g.node("Mul", [value, a], shape)
            g.node("Add", [left, b], shape)
        else:  # a dead node: nothing reads it (it leaves the pool)
            g.node("Relu", [value], shape)
            g.pool.pop()
    outputs = [g.pool[-1]]
    if len(g.pool) > 2 and draw(st.booleans()):
        extra = draw(st.sampled_from(g.pool[1:-1]))
        outputs.append(extra)
    graph = helper.make_graph(
        g.nodes,
        "random",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(g.pool[0][1]))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs],
        g.inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(proto, full_check=True)  # a generator bug shows up here
    return ir.from_proto(proto)


SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_the_lossless_passes_are_the_expected_ones():
    # A pass that becomes lossy (or a new lossless one) should be a visible change here.
    assert {"cleanup", "cse", "dce", "fold-constants", "eliminate-identity"} <= set(LOSSLESS)
    assert not {"quantize", "prune", "lowrank", "cast"} & set(LOSSLESS)


@pytest.mark.parametrize("name", LOSSLESS)
@SETTINGS
@given(model=graphs())
def test_a_lossless_pass_keeps_the_outputs(name, model):
    info = default_registry().get(name)
    pass_ = info.create(**_options(name, model))
    after = pass_(model.clone()).model
    tolerance = getattr(pass_, "tolerance", None) or TOLERANCE
    assert_same_outputs(model, after, tolerance=tolerance)
    assert [v.name for v in after.graph.outputs] == [v.name for v in model.graph.outputs]


@settings(SETTINGS, max_examples=2 * EXAMPLES)
@given(model=graphs())
def test_all_lossless_passes_in_sequence_keep_the_outputs(model):
    registry = default_registry()
    after = model.clone()
    for name in LOSSLESS:
        if name == "partition" and not len(after.graph):
            continue  # everything folded away: nothing to split
        after = registry.create(name, **_options(name, after))(after).model
    assert_same_outputs(model, after, tolerance=TOLERANCE)


@pytest.mark.parametrize("name", IDENTITY_PASSES)
def test_identity_of_a_graph_output_keeps_both_outputs(name):
    model = model_from_text(
        """
        g (float[1,2] x) => (float[1,2] copy, float[1,2] r) {
          r = Relu(x)
          copy = Identity(r)
        }
        """
    )
    after = default_registry().create(name)(model.clone()).model
    assert [v.name for v in after.graph.outputs] == ["copy", "r"]
    assert_same_outputs(model, after, tolerance=0.0)
