"""Float32 products on constant weights through the panel GEMM kernel: the layout, and results
against onnxruntime for row and column tails, biases, tied embeddings, symbolic row counts, and
the weights that must stay as they are."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from backends.tvm import compile_model
from backends.tvm.panel_gemm import lower_float_matmuls
from backends.tvm.panel_kernels import PANEL, pack_panels
from tests.backends.tvm.op_testing import run_onnxruntime, run_tvm

pytestmark = pytest.mark.tvm


def _model(nodes, inputs, outputs, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(a, name) for name, a in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    return model


def _weights(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    expected = run_onnxruntime(model, feeds)
    got = run_tvm(model, feeds)
    for out, ref in zip(got, expected, strict=True):
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def _lowered_ops(model: onnx.ModelProto) -> list[str]:
    lowered = ir.serde.deserialize_model(model)
    lower_float_matmuls(lowered)
    return sorted(node.op_type for node in lowered.graph)


def test_panels_hold_columns_in_groups_of_32_padded_with_zeros():
    (w,) = _weights((5, 70))
    panels = pack_panels(w)
    assert panels.shape == (3, 5, PANEL)
    for p in range(3):
        for j in range(PANEL):
            column = w[:, PANEL * p + j] if PANEL * p + j < 70 else np.zeros(5, np.float32)
            np.testing.assert_array_equal(panels[p, :, j], column)


@pytest.mark.parametrize(
    ("x_shape", "n"),
    [
        ([1, 1, 64], 150),  # one row (a decode step), a partial panel
        ([2, 7, 64], 96),  # 14 rows: one block of 8 and 6 single rows
        ([19, 64], 140),  # 2-D input, four full panels and a partial one
        ([3, 16, 64], 64),  # whole blocks and panels only
        ([2, 3, 5, 64], 96),  # rank 4: rows reshaped back after the kernel
    ],
)
def test_matmul_on_a_constant_weight_matches_onnxruntime(x_shape, n):
    (w,) = _weights((64, n))
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [("x", TensorProto.FLOAT, x_shape)],
        [("y", TensorProto.FLOAT, [*x_shape[:-1], n])],
        {"w": w},
    )
    assert _lowered_ops(model) == ["PanelMatMul"]
    (x,) = _weights(x_shape, seed=1)
    _check(model, {"x": x})
    compiled = compile_model(ir.serde.deserialize_model(model))
    assert [p.shape for p in compiled.params] == [pack_panels(w).shape]  # no copy of w


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bias_and_transposed_weight_run_in_the_kernel(trans_b):
    w, c = _weights((96, 72) if trans_b else (72, 96), (96,))
    model = _model(
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=trans_b)],
        [("x", TensorProto.FLOAT, [11, 72])],
        [("y", TensorProto.FLOAT, [11, 96])],
        {"w": w, "c": c},
    )
    assert _lowered_ops(model) == ["PanelMatMul"]
    _check(model, {"x": _weights((11, 72), seed=2)[0]})


def test_an_add_of_a_bias_vector_after_matmul_is_fused():
    w, b = _weights((32, 160), (160,))
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["b", "h"], ["y"])],
        [("x", TensorProto.FLOAT, [1, 9, 32])],
        [("y", TensorProto.FLOAT, [1, 9, 160])],
        {"w": w, "b": b},
    )
    assert _lowered_ops(model) == ["PanelMatMul"]
    _check(model, {"x": _weights((1, 9, 32), seed=3)[0]})


def test_a_bias_after_a_reshape_that_keeps_the_columns_last_is_fused():
    """GPT-2's export: Gemm(x, W) -> Reshape([1, rows, N]) -> Add(bias)."""
    w, b = _weights((32, 128), (128,))
    shape = np.array([1, 6, 128], np.int64)
    model = _model(
        [
            helper.make_node("Gemm", ["x", "w"], ["h"]),
            helper.make_node("Reshape", ["h", "shape"], ["r"]),
            helper.make_node("Add", ["r", "b"], ["y"]),
        ],
        [("x", TensorProto.FLOAT, [6, 32])],
        [("y", TensorProto.FLOAT, [1, 6, 128])],
        {"w": w, "b": b, "shape": shape},
    )
    model = onnx.shape_inference.infer_shapes(model)
    assert _lowered_ops(model) == ["PanelMatMul", "Reshape"]
    _check(model, {"x": _weights((6, 32), seed=5)[0]})


def test_tied_embedding_and_head_share_one_packed_tensor():
    """Gather(E, ids) and MatMul(h, Transpose(E)): both read E's panels; E is stored once."""
    (e,) = _weights((140, 24))
    model = _model(
        [
            helper.make_node("Gather", ["e", "ids"], ["emb"]),
            helper.make_node("Transpose", ["e"], ["et"], perm=[1, 0]),
            helper.make_node("MatMul", ["emb", "et"], ["logits"]),
        ],
        [("ids", TensorProto.INT64, [1, 5])],
        [("emb", TensorProto.FLOAT, [1, 5, 24]), ("logits", TensorProto.FLOAT, [1, 5, 140])],
        {"e": e},
    )
    assert _lowered_ops(model) == ["PanelGather", "PanelMatMul"]
    _check(model, {"ids": np.array([[0, 139, 33, -1, -140]], np.int64)})
    compiled = compile_model(ir.serde.deserialize_model(model))
    assert [p.shape for p in compiled.params] == [(5, 24, PANEL)]


def test_a_weight_with_another_use_stays_whole_and_goes_to_blas():
    (w,) = _weights((16, 96))
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            helper.make_node("ReduceSum", ["w"], ["total"], keepdims=0),
        ],
        [("x", TensorProto.FLOAT, [4, 16])],
        [("y", TensorProto.FLOAT, [4, 96]), ("total", TensorProto.FLOAT, [])],
        {"w": w},
    )
    assert _lowered_ops(model) == ["MatMul", "ReduceSum"]
    _check(model, {"x": _weights((4, 16), seed=4)[0]})


def test_a_narrow_weight_goes_to_blas():
    """N = 40 would fill two panels of 32 with 24 columns of padding."""
    (w,) = _weights((16, 40))
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [("x", TensorProto.FLOAT, [4, 16])],
        [("y", TensorProto.FLOAT, [4, 40])],
        {"w": w},
    )
    assert _lowered_ops(model) == ["MatMul"]


@pytest.mark.parametrize("rows", [1, 3, 21])
def test_one_kernel_serves_a_symbolic_row_count(rows):
    import tvm

    w, b = _weights((64, 160), (160,))
    model = _model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
        [("x", TensorProto.FLOAT, ["seq", 64])],
        [("y", TensorProto.FLOAT, ["seq", 160])],
        {"w": w, "b": b},
    )
    compiled = compile_model(ir.serde.deserialize_model(model))
    vm = tvm.runtime.vm.VirtualMachine(compiled.executable, tvm.cpu())
    (x,) = _weights((rows, 64), seed=rows)
    got = vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(p) for p in compiled.params])
    np.testing.assert_allclose(got.numpy(), x @ w + b, rtol=1e-5, atol=1e-5)


def test_a_rank_3_product_writes_its_batch_and_sequence_in_place():
    """``[batch, seq, n]`` straight from the kernel: an output reshaped after the kernel was a
    copy (1.5 ms of GPT-2's LM head)."""
    import tvm

    (w,) = _weights((64, 160))
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [("x", TensorProto.FLOAT, ["batch", "seq", 64])],
        [("y", TensorProto.FLOAT, ["batch", "seq", 160])],
        {"w": w},
    )
    compiled = compile_model(ir.serde.deserialize_model(model))
    vm = tvm.runtime.vm.VirtualMachine(compiled.executable, tvm.cpu())
    for shape in [(1, 1, 64), (2, 7, 64), (3, 8, 64)]:
        (x,) = _weights(shape, seed=shape[1])
        params = [tvm.runtime.tensor(p) for p in compiled.params]
        got = vm["main"](tvm.runtime.tensor(x), *params)
        np.testing.assert_allclose(got.numpy(), x @ w, rtol=1e-5, atol=1e-5)
    stats = compiled.executable.stats()
    functions = stats[stats.index("Globals") :].split("[", 1)[1].split("]", 1)[0].split(", ")
    assert "panel_gemm_k64_n160_3d" in functions
    assert not [f for f in functions if "reshape" in f and not f.startswith("vm.builtin")]


def test_compiling_leaves_the_callers_model_untouched():
    (w,) = _weights((16, 96))
    model = ir.serde.deserialize_model(
        _model(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            [("x", TensorProto.FLOAT, [2, 16])],
            [("y", TensorProto.FLOAT, [2, 96])],
            {"w": w},
        )
    )
    compile_model(model)
    assert [node.op_type for node in model.graph] == ["MatMul"]
    assert list(model.graph.initializers) == ["w"]
