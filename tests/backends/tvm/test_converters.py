"""Our converters for standard ONNX ops TVM's importer lacks or gets wrong, against onnxruntime.

Each model is compiled with the TVM backend, run, and every output compared with onnxruntime
(graph optimizations off: the reference computes each op as specified) on seeded inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

from tests.backends.tvm.op_testing import run_onnxruntime, run_tvm

pytestmark = pytest.mark.tvm

FLOAT = TensorProto.FLOAT
RTOL, ATOL = 1e-4, 1e-5  # fp32: reassociated sums and TVM's fast exp/tanh


def _model(nodes, inputs, outputs, opset: int = 23) -> onnx.ModelProto:
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in inputs],
        [oh.make_tensor_value_info(name, dtype, None) for name, dtype in outputs],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    # Output shapes from ONNX's inference (TVM's importer runs the checker, which needs them).
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def _feeds(model: onnx.ModelProto, seed: int = 0, **given) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.name in given:
            feeds[value.name] = np.asarray(given[value.name], dtype=dtype)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _onnx_reference(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)


def _check(
    model: onnx.ModelProto, feeds, rtol: float = RTOL, atol: float = ATOL, reference=run_onnxruntime
) -> None:
    expected = reference(model, feeds)
    got = run_tvm(model, feeds)
    assert len(got) == len(expected)
    for name, out, ref in zip([o.name for o in model.graph.output], got, expected, strict=True):
        assert out.shape == ref.shape, name
        assert out.dtype == ref.dtype, name
        np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol, err_msg=name)


# --- Attention (opset 23) --------------------------------------------------------------------


def _attention(inputs, outputs=("y",), opset: int = 23, **attrs):
    """An Attention model; an input or output named "" is an omitted optional one."""
    node = oh.make_node("Attention", [name for name, _, _ in inputs], list(outputs), **attrs)
    graph_inputs = [i for i in inputs if i[0]]
    dtype = inputs[0][1]  # outputs have Q's dtype
    return _model([node], graph_inputs, [(name, dtype) for name in outputs if name], opset)


def test_attention_3d_grouped_query_causal_with_kv_cache():
    # 3D inputs split into 4 query heads over 2 KV heads; the past makes causal bottom-right.
    model = _attention(
        [
            ("q", FLOAT, [2, 3, 32]),
            ("k", FLOAT, [2, 3, 16]),
            ("v", FLOAT, [2, 3, 16]),
            ("", FLOAT, None),
            ("past_k", FLOAT, [2, 2, 5, 8]),
            ("past_v", FLOAT, [2, 2, 5, 8]),
        ],
        outputs=("y", "present_k", "present_v"),
        q_num_heads=4,
        kv_num_heads=2,
        is_causal=1,
    )
    _check(model, _feeds(model))


def test_attention_4d_bool_mask_softcap_and_qk_output():
    mask = np.random.default_rng(1).random((4, 6)) > 0.3
    mask[2] = False  # a fully masked row: its output is zeros
    model = _attention(
        [
            ("q", FLOAT, [1, 2, 4, 8]),
            ("k", FLOAT, [1, 2, 6, 8]),
            ("v", FLOAT, [1, 2, 6, 8]),
            ("mask", TensorProto.BOOL, [4, 6]),
        ],
        outputs=("y", "", "", "qk"),
        softcap=2.0,
        scale=0.3,
        qk_matmul_output_mode=3,
    )
    _check(model, _feeds(model, mask=mask))


def test_attention_float_mask_shorter_than_the_keys_is_padded():
    model = _attention(
        [
            ("q", FLOAT, [1, 2, 3, 4]),
            ("k", FLOAT, [1, 2, 5, 4]),
            ("v", FLOAT, [1, 2, 5, 4]),
            ("mask", FLOAT, [3, 4]),
        ],
        outputs=("y", "", "", "qk"),
        qk_matmul_output_mode=2,
    )
    # onnxruntime refuses masks shorter than the keys; the spec pads them with -inf.
    _check(model, _feeds(model), reference=_onnx_reference)


@pytest.mark.parametrize(("left", "right", "causal"), [(2, -1, 1), (1, 2, 0), (-1, 0, 0)])
def test_attention_sliding_window_after_a_kv_cache(left, right, causal):
    # Opset 25: query i at position p = i + 3 (the past) attends p - left <= j <= p + right;
    # the first query row of (-1, 0, ...) keeps keys 0..3, the window composes with the mask.
    mask = np.random.default_rng(2).random((3, 6)) > 0.2
    model = _attention(
        [
            ("q", FLOAT, [1, 2, 3, 8]),
            ("k", FLOAT, [1, 2, 3, 8]),
            ("v", FLOAT, [1, 2, 3, 8]),
            ("mask", TensorProto.BOOL, [3, 6]),
            ("past_k", FLOAT, [1, 2, 3, 8]),
            ("past_v", FLOAT, [1, 2, 3, 8]),
        ],
        outputs=("y", "", "", "qk"),
        left_window_size=left,
        right_window_size=right,
        is_causal=causal,
        qk_matmul_output_mode=3,
        opset=25,
    )
    _check(model, _feeds(model, mask=mask), reference=_onnx_reference)


def test_attention_float16_accumulates_in_float32():
    # Long dot products (head 256, 64 keys): accumulated in half precision they drift ~1e-2;
    # in float32 the result is within a half ULP or two of attention computed in float32.
    half = TensorProto.FLOAT16
    model = _attention(
        [("q", half, [1, 2, 4, 256]), ("k", half, [1, 2, 64, 256]), ("v", half, [1, 2, 64, 256])],
        is_causal=1,
    )
    feeds = _feeds(model)
    wide = _attention(
        [
            ("q", FLOAT, [1, 2, 4, 256]),
            ("k", FLOAT, [1, 2, 64, 256]),
            ("v", FLOAT, [1, 2, 64, 256]),
        ],
        is_causal=1,
    )
    expected = _onnx_reference(wide, {k: v.astype(np.float32) for k, v in feeds.items()})[0]
    got = run_tvm(model, feeds)[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=2e-3, atol=2e-3)


# --- RotaryEmbedding, RMSNormalization, LayerNormalization, Shape ---------------------------


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_3d_with_positions_and_partial_rotation(interleaved):
    node = oh.make_node(
        "RotaryEmbedding",
        ["x", "cos", "sin", "positions"],
        ["y"],
        num_heads=2,
        rotary_embedding_dim=8,
        interleaved=interleaved,
    )
    model = _model(
        [node],
        [
            ("x", FLOAT, [2, 3, 32]),
            ("cos", FLOAT, [10, 4]),
            ("sin", FLOAT, [10, 4]),
            ("positions", TensorProto.INT64, [2, 3]),
        ],
        [("y", FLOAT)],
    )
    _check(model, _feeds(model, positions=[[0, 3, 9], [1, 1, 7]]))


def test_rotary_embedding_4d_without_positions():
    node = oh.make_node("RotaryEmbedding", ["x", "cos", "sin"], ["y"])
    model = _model(
        [node],
        [("x", FLOAT, [1, 2, 3, 8]), ("cos", FLOAT, [1, 3, 4]), ("sin", FLOAT, [1, 3, 4])],
        [("y", FLOAT)],
    )
    _check(model, _feeds(model))


def test_rms_normalization_over_trailing_axes_with_broadcast_scale():
    # TVM's converter hands the rank-1 scale of a two-axis norm to rms_norm: compile error.
    node = oh.make_node("RMSNormalization", ["x", "scale"], ["y"], axis=1, epsilon=1e-3)
    model = _model([node], [("x", FLOAT, [2, 3, 4]), ("scale", FLOAT, [4])], [("y", FLOAT)])
    _check(model, _feeds(model))


def test_rms_normalization_float16_computes_in_float32():
    node = oh.make_node("RMSNormalization", ["x", "scale"], ["y"])
    model = _model(
        [node],
        [("x", TensorProto.FLOAT16, [2, 16]), ("scale", TensorProto.FLOAT16, [16])],
        [("y", TensorProto.FLOAT16)],
    )
    _check(model, _feeds(model), rtol=1e-3, atol=1e-3)


def test_layer_normalization_returns_mean_and_inverse_std():
    node = oh.make_node(
        "LayerNormalization", ["x", "scale", "bias"], ["y", "mean", "inv_std"], axis=-2
    )
    model = _model(
        [node],
        [("x", FLOAT, [2, 3, 4]), ("scale", FLOAT, [3, 4]), ("bias", FLOAT, [3, 4])],
        [("y", FLOAT), ("mean", FLOAT), ("inv_std", FLOAT)],
        opset=17,
    )
    _check(model, _feeds(model))


def test_shape_arithmetic_on_static_shapes():
    # Shape feeding arithmetic (an expanded function's pattern): TVM's ShapeExpr is refused by
    # Mul/Div; our Shape gives a constant.
    nodes = [
        oh.make_node("Shape", ["x"], ["shape"], start=-1),
        oh.make_node(
            "Constant", [], ["two"], value=oh.make_tensor("two", TensorProto.INT64, [1], [2])
        ),
        oh.make_node("Div", ["shape", "two"], ["half"]),
        oh.make_node("Concat", ["half", "two"], ["new_shape"], axis=0),
        oh.make_node("Reshape", ["x2", "new_shape"], ["y"]),
    ]
    model = _model(nodes, [("x", FLOAT, [3, 8]), ("x2", FLOAT, [2, 4])], [("y", FLOAT)], opset=21)
    _check(model, _feeds(model))


def test_constant_from_value_float_and_value_ints():
    # Function bodies write scalars as value_float / value_ints; TVM's converter reads `value`.
    nodes = [
        oh.make_node("Constant", [], ["alpha"], value_float=2.5),
        oh.make_node("Constant", [], ["shape"], value_ints=[4, 2]),
        oh.make_node("Mul", ["x", "alpha"], ["scaled"]),
        oh.make_node("Reshape", ["scaled", "shape"], ["y"]),
    ]
    model = _model(nodes, [("x", FLOAT, [2, 4])], [("y", FLOAT)], opset=21)
    _check(model, _feeds(model))


def test_one_hot_with_runtime_values_and_negative_indices():
    node = oh.make_node("OneHot", ["indices", "depth", "values"], ["y"], axis=1)
    model = _model(
        [node],
        [
            ("indices", TensorProto.INT64, [2, 3]),
            ("depth", TensorProto.INT64, []),
            ("values", FLOAT, [2]),
        ],
        [("y", FLOAT)],
        opset=11,
    )
    depth = oh.make_tensor("depth", TensorProto.INT64, [], [5])
    model.graph.initializer.append(depth)  # depth sets the output shape: a constant
    del model.graph.input[1]
    feeds = _feeds(model, indices=[[0, 4, -1], [2, -5, 3]], values=[-1.5, 3.0])
    _check(model, feeds)
