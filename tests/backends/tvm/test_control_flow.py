"""If/Loop/Scan lowered to straight-line nodes (backends/tvm/control_flow.py).

Each lowered model must compute what the original computes: both run in onnxruntime (graph
optimizations off) on seeded inputs, and no control-flow node may remain. A few models are also
compiled with TVM end to end; refusals must name the node and say why.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as oh

from backends.tvm import compile_model
from backends.tvm.control_flow import has_control_flow, lower_control_flow
from compiler.errors import BackendError
from tests.backends.tvm.op_testing import run_onnxruntime, run_tvm

pytestmark = pytest.mark.tvm

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
RTOL, ATOL = 1e-5, 1e-6  # the same ops in the same order: only TVM's fused kernels reassociate


def _model(nodes, inputs, outputs, initializers=(), opset: int = 21) -> onnx.ModelProto:
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in inputs],
        [oh.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in outputs],
        initializer=list(initializers),
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def _const(name: str, array) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(array), name)


def _lowered(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    lowered = ir.serde.deserialize_model(model)
    count = lower_control_flow(lowered)
    assert not has_control_flow(lowered)
    return ir.serde.serialize_model(lowered), count


def _check_lowering(model: onnx.ModelProto, *feeds_list) -> onnx.ModelProto:
    """The lowered model gives the original's outputs (onnxruntime) for every feed."""
    lowered, count = _lowered(model)
    assert count >= 1
    onnx.checker.check_model(lowered)
    for feeds in feeds_list:
        expected = run_onnxruntime(model, feeds)
        got = run_onnxruntime(lowered, feeds)
        for out, ref in zip(got, expected, strict=True):
            assert out.shape == ref.shape and out.dtype == ref.dtype
            np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    return lowered


def _check_tvm(model: onnx.ModelProto, feeds) -> None:
    for out, ref in zip(run_tvm(model, feeds), run_onnxruntime(model, feeds), strict=True):
        assert out.shape == ref.shape and out.dtype == ref.dtype
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- If -------------------------------------------------------------------------------------


def _branch(name: str, op: str, x_name: str = "x") -> onnx.GraphProto:
    """A branch computing ``op(x)`` from the outer-scope ``x`` (float[2, 3])."""
    return oh.make_graph(
        [oh.make_node(op, [x_name], [f"{name}_out"])],
        name,
        [],
        [oh.make_tensor_value_info(f"{name}_out", FLOAT, [2, 3])],
    )


def test_if_with_a_folding_condition_inlines_the_taken_branch():
    # cond = Size(x) == 6 folds from x's static shape: only the then-branch (Exp) remains.
    nodes = [
        oh.make_node("Size", ["x"], ["size"]),
        oh.make_node("Equal", ["size", "six"], ["cond"]),
        oh.make_node(
            "If",
            ["cond"],
            ["y"],
            then_branch=_branch("then", "Exp"),
            else_branch=_branch("else", "Neg"),
        ),
    ]
    model = _model(
        nodes, [("x", FLOAT, [2, 3])], [("y", FLOAT, [2, 3])], [_const("six", np.int64(6))]
    )
    feeds = {"x": _rng().standard_normal((2, 3)).astype(np.float32)}
    lowered = _check_lowering(model, feeds)
    ops = {node.op_type for node in lowered.graph.node}
    assert "Exp" in ops and "Neg" not in ops and "Where" not in ops
    _check_tvm(model, feeds)


def test_if_with_a_runtime_condition_selects_between_both_branches():
    nodes = [
        oh.make_node(
            "If",
            ["cond"],
            ["y"],
            then_branch=_branch("then", "Exp"),
            else_branch=_branch("else", "Neg"),
        )
    ]
    model = _model(nodes, [("cond", BOOL, []), ("x", FLOAT, [2, 3])], [("y", FLOAT, [2, 3])])
    x = _rng().standard_normal((2, 3)).astype(np.float32)
    _check_lowering(model, {"cond": np.array(True), "x": x}, {"cond": np.array(False), "x": x})
    import tvm

    compiled = compile_model(ir.serde.deserialize_model(model), "llvm")
    vm = tvm.runtime.vm.VirtualMachine(compiled.executable, tvm.cpu())
    for cond, expected in ((True, np.exp(x)), (False, -x)):
        feeds = {"cond": np.array(cond), "x": x}
        args = [tvm.runtime.tensor(feeds[name]) for name in compiled.input_names]
        np.testing.assert_allclose(vm["main"](*args).numpy(), expected, rtol=1e-5)


def test_if_with_a_runtime_condition_and_branches_of_different_shapes_is_refused():
    other = oh.make_graph(
        [oh.make_node("ReduceSum", ["x"], ["else_out"], keepdims=0)],
        "else",
        [],
        [oh.make_tensor_value_info("else_out", FLOAT, [])],
    )
    node = oh.make_node(
        "If", ["cond"], ["y"], then_branch=_branch("then", "Exp"), else_branch=other, name="pick"
    )
    model = oh.make_model(
        oh.make_graph(
            [node],
            "g",
            [
                oh.make_tensor_value_info("cond", BOOL, []),
                oh.make_tensor_value_info("x", FLOAT, [2, 3]),
            ],
            [oh.make_tensor_value_info("y", FLOAT, None)],
        ),
        opset_imports=[oh.make_opsetid("", 21)],
    )
    with pytest.raises(BackendError, match=r"node 'pick' \(If\): the condition is a runtime"):
        lower_control_flow(ir.serde.deserialize_model(model))


# --- Loop -----------------------------------------------------------------------------------


def _accumulating_body(cond_out: onnx.NodeProto | None = None) -> onnx.GraphProto:
    """(i, cond, acc) -> (cond, acc + x[i] * scale, acc): x and scale from the outer scope."""
    nodes = [
        oh.make_node("Gather", ["x", "i"], ["row"], axis=0),
        oh.make_node("Mul", ["row", "scale"], ["scaled"]),
        oh.make_node("Add", ["acc_in", "scaled"], ["acc_out"]),
        oh.make_node("Identity", ["acc_in"], ["before"]),
        cond_out or oh.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    return oh.make_graph(
        nodes,
        "body",
        [
            oh.make_tensor_value_info("i", INT64, []),
            oh.make_tensor_value_info("cond_in", BOOL, []),
            oh.make_tensor_value_info("acc_in", FLOAT, [3]),
        ],
        [
            oh.make_tensor_value_info("cond_out", BOOL, []),
            oh.make_tensor_value_info("acc_out", FLOAT, [3]),
            oh.make_tensor_value_info("before", FLOAT, [3]),
        ],
    )


def _loop_model(trips: int, body: onnx.GraphProto, initializers=()) -> onnx.ModelProto:
    nodes = [oh.make_node("Loop", ["trips", "", "acc0"], ["acc", "history"], body=body)]
    return _model(
        nodes,
        [("x", FLOAT, [5, 3]), ("scale", FLOAT, [3]), ("acc0", FLOAT, [3])],
        [("acc", FLOAT, [3]), ("history", FLOAT, None)],
        [_const("trips", np.int64(trips)), *initializers],
    )


def _loop_feeds(seed: int = 0) -> dict[str, np.ndarray]:
    rng = _rng(seed)
    return {
        name: rng.standard_normal(shape).astype(np.float32)
        for name, shape in (("x", (5, 3)), ("scale", (3,)), ("acc0", (3,)))
    }


def test_loop_with_a_constant_trip_count_is_unrolled():
    model = _loop_model(4, _accumulating_body())
    lowered = _check_lowering(model, _loop_feeds())
    assert sum(node.op_type == "Gather" for node in lowered.graph.node) == 4
    _check_tvm(model, _loop_feeds(1))


def test_loop_stops_when_the_body_condition_folds_to_false():
    # cond_out = i < 2: three iterations of the five allowed.
    less = oh.make_node("Less", ["i", "two"], ["cond_out"])
    model = _loop_model(5, _accumulating_body(less), [_const("two", np.int64(2))])
    lowered = _check_lowering(model, _loop_feeds())
    assert run_onnxruntime(lowered, _loop_feeds())[1].shape == (3, 3)


def test_loop_with_a_runtime_trip_count_is_refused():
    body = _accumulating_body()
    node = oh.make_node("Loop", ["trips", "", "acc0"], ["acc", "history"], body=body, name="L")
    model = _model(
        [node],
        [("trips", INT64, []), ("x", FLOAT, [5, 3]), ("scale", FLOAT, [3]), ("acc0", FLOAT, [3])],
        [("acc", FLOAT, [3]), ("history", FLOAT, None)],
    )
    with pytest.raises(BackendError, match=r"node 'L' \(Loop\): the trip count M is not a const"):
        lower_control_flow(ir.serde.deserialize_model(model))


def test_if_nested_in_a_loop_body_folds_once_unrolled():
    # Each iteration adds x[i] when i is even, subtracts it otherwise: the If's condition
    # depends on the iteration number only, so every copy inlines one branch.
    add = oh.make_graph(
        [oh.make_node("Add", ["acc_in", "row"], ["plus"])],
        "even",
        [],
        [oh.make_tensor_value_info("plus", FLOAT, [3])],
    )
    sub = oh.make_graph(
        [oh.make_node("Sub", ["acc_in", "row"], ["minus"])],
        "odd",
        [],
        [oh.make_tensor_value_info("minus", FLOAT, [3])],
    )
    body = oh.make_graph(
        [
            oh.make_node("Gather", ["x", "i"], ["row"], axis=0),
            oh.make_node("Mod", ["i", "two"], ["parity"]),
            oh.make_node("Equal", ["parity", "zero"], ["even"]),
            oh.make_node("If", ["even"], ["acc_out"], then_branch=add, else_branch=sub),
            oh.make_node("Identity", ["acc_out"], ["before"]),
            oh.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            oh.make_tensor_value_info("i", INT64, []),
            oh.make_tensor_value_info("cond_in", BOOL, []),
            oh.make_tensor_value_info("acc_in", FLOAT, [3]),
        ],
        [
            oh.make_tensor_value_info("cond_out", BOOL, []),
            oh.make_tensor_value_info("acc_out", FLOAT, [3]),
            oh.make_tensor_value_info("before", FLOAT, [3]),
        ],
    )
    model = _loop_model(5, body, [_const("two", np.int64(2)), _const("zero", np.int64(0))])
    lowered = _check_lowering(model, _loop_feeds())
    ops = [node.op_type for node in lowered.graph.node]
    assert ops.count("Add") == 3 and ops.count("Sub") == 2


# --- Scan -----------------------------------------------------------------------------------


def _scan_body() -> onnx.GraphProto:
    """(total, count, x_t) -> (total + x_t, count + 1, total * x_t): two states, one output."""
    return oh.make_graph(
        [
            oh.make_node("Add", ["total_in", "x_t"], ["total_out"]),
            oh.make_node("Add", ["count_in", "one"], ["count_out"]),
            oh.make_node("Mul", ["total_in", "x_t"], ["y_t"]),
        ],
        "body",
        [
            oh.make_tensor_value_info("total_in", FLOAT, [2]),
            oh.make_tensor_value_info("count_in", FLOAT, []),
            oh.make_tensor_value_info("x_t", FLOAT, [2]),
        ],
        [
            oh.make_tensor_value_info("total_out", FLOAT, [2]),
            oh.make_tensor_value_info("count_out", FLOAT, []),
            oh.make_tensor_value_info("y_t", FLOAT, [2]),
        ],
    )


def test_scan_with_axes_and_reversed_directions_is_unrolled():
    # x is (2, 4): scanned along axis 1 backwards; y stacks on axis 1, reversed too.
    node = oh.make_node(
        "Scan",
        ["total0", "count0", "x"],
        ["total", "count", "y"],
        body=_scan_body(),
        num_scan_inputs=1,
        scan_input_axes=[1],
        scan_input_directions=[1],
        scan_output_axes=[-1],
        scan_output_directions=[1],
    )
    model = _model(
        [node],
        [("total0", FLOAT, [2]), ("count0", FLOAT, []), ("x", FLOAT, [2, 4])],
        [("total", FLOAT, [2]), ("count", FLOAT, []), ("y", FLOAT, [2, 4])],
        [_const("one", np.float32(1.0))],
    )
    rng = _rng()
    feeds = {
        "total0": rng.standard_normal(2).astype(np.float32),
        "count0": np.array(0.0, dtype=np.float32),
        "x": rng.standard_normal((2, 4)).astype(np.float32),
    }
    _check_lowering(model, feeds)
    _check_tvm(model, feeds)


def test_opset8_scan_runs_each_batch_element():
    body = oh.make_graph(
        [
            oh.make_node("Add", ["sum_in", "x_t"], ["sum_out"]),
            oh.make_node("Identity", ["sum_out"], ["y_t"]),
        ],
        "body",
        [
            oh.make_tensor_value_info("sum_in", FLOAT, [2]),
            oh.make_tensor_value_info("x_t", FLOAT, [2]),
        ],
        [
            oh.make_tensor_value_info("sum_out", FLOAT, [2]),
            oh.make_tensor_value_info("y_t", FLOAT, [2]),
        ],
    )
    node = oh.make_node("Scan", ["", "s0", "x"], ["s", "y"], body=body, num_scan_inputs=1)
    model = _model(
        [node],
        [("s0", FLOAT, [3, 2]), ("x", FLOAT, [3, 4, 2])],
        [("s", FLOAT, [3, 2]), ("y", FLOAT, [3, 4, 2])],
        opset=8,
    )
    rng = _rng()
    feeds = {
        "s0": rng.standard_normal((3, 2)).astype(np.float32),
        "x": rng.standard_normal((3, 4, 2)).astype(np.float32),
    }
    _check_lowering(model, feeds)
