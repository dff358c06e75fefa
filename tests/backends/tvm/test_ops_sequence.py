"""RNN/GRU/LSTM, LinearAttention and CausalConvWithState (backends/tvm/ops_sequence.py).

Each model is compiled with the TVM backend, run, and every output compared with onnxruntime
(graph optimizations off) on seeded inputs, or with onnx's reference implementation where
onnxruntime lacks the op or the attribute (batch-first ``layout=1``, the opset-27 ops).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

from tests.backends.tvm.op_testing import run_onnxruntime, run_tvm

pytestmark = pytest.mark.tvm

FLOAT, FLOAT16, INT32 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT32
RTOL, ATOL = 1e-4, 1e-5  # fp32: reassociated sums and TVM's exp/tanh


def _model(node, inputs, outputs, opset: int) -> onnx.ModelProto:
    graph = oh.make_graph(
        [node],
        "g",
        [oh.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in inputs if name],
        [oh.make_tensor_value_info(name, 0, None) for name in outputs if name],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def _feeds(model: onnx.ModelProto, seed: int = 0, scale: float = 1.0, **given):
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.name in given:
            feeds[value.name] = np.asarray(given[value.name], dtype=dtype)
        else:
            feeds[value.name] = (scale * rng.standard_normal(shape)).astype(dtype)
    return feeds


def _onnx_reference(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)


def _check(model, feeds, reference=run_onnxruntime, rtol=RTOL, atol=ATOL) -> None:
    expected = reference(model, feeds)
    got = run_tvm(model, feeds)
    assert len(got) == len(expected)
    for name, out, ref in zip([o.name for o in model.graph.output], got, expected, strict=True):
        assert out.shape == ref.shape, name
        assert out.dtype == ref.dtype, name
        np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol, err_msg=name)


# --- RNN, GRU, LSTM -------------------------------------------------------------------------

SEQ, BATCH, INPUT, HIDDEN = 5, 3, 4, 6


def _recurrent(op: str, gates: int, *, dirs: int = 1, layout: int = 0, extra=(), **attrs):
    """An ``op`` node with X, W, R, B, sequence_lens, initial_h (+ ``extra`` inputs)."""
    x_shape = [BATCH, SEQ, INPUT] if layout else [SEQ, BATCH, INPUT]
    h_shape = [BATCH, dirs, HIDDEN] if layout else [dirs, BATCH, HIDDEN]
    inputs = [
        ("x", FLOAT, x_shape),
        ("w", FLOAT, [dirs, gates * HIDDEN, INPUT]),
        ("r", FLOAT, [dirs, gates * HIDDEN, HIDDEN]),
        ("b", FLOAT, [dirs, 2 * gates * HIDDEN]),
        ("lengths", INT32, [BATCH]),
        ("h0", FLOAT, h_shape),
        *extra,
    ]
    outputs = ["y", "y_h", "y_c"] if op == "LSTM" else ["y", "y_h"]
    node = oh.make_node(
        op, [name for name, _, _ in inputs], outputs, hidden_size=HIDDEN, layout=layout, **attrs
    )
    return _model(node, inputs, outputs, opset=22)


LENGTHS = np.array([5, 2, 4], dtype=np.int32)  # per batch entry: steps past these are masked


def test_rnn_bidirectional_with_lengths_and_two_activations():
    model = _recurrent(
        "RNN",
        1,
        dirs=2,
        direction="bidirectional",
        activations=["Tanh", "LeakyRelu"],
        activation_alpha=[0.2],
        clip=2.5,
    )
    _check(model, _feeds(model, lengths=LENGTHS))


def test_gru_reverse_with_linear_before_reset_and_lengths():
    model = _recurrent("GRU", 3, direction="reverse", linear_before_reset=1)
    _check(model, _feeds(model, lengths=LENGTHS))


def test_gru_forward_resets_before_the_recurrent_matmul():
    model = _recurrent("GRU", 3, activations=["HardSigmoid", "Softsign"])
    _check(model, _feeds(model, lengths=LENGTHS))


def test_lstm_bidirectional_with_peepholes_initial_cell_and_lengths():
    extra = [("c0", FLOAT, [2, BATCH, HIDDEN]), ("p", FLOAT, [2, 3 * HIDDEN])]
    model = _recurrent("LSTM", 4, dirs=2, extra=extra, direction="bidirectional")
    _check(model, _feeds(model, lengths=LENGTHS))


def test_lstm_input_forget_couples_the_gates():
    model = _recurrent("LSTM", 4, input_forget=1)
    _check(model, _feeds(model, lengths=LENGTHS))


def test_lstm_batch_first_layout():
    # onnxruntime refuses layout=1: onnx's reference (which ignores sequence_lens: all full).
    model = _recurrent("LSTM", 4, layout=1, extra=[("c0", FLOAT, [BATCH, 1, HIDDEN])])
    full = np.full(BATCH, SEQ, dtype=np.int32)
    _check(model, _feeds(model, lengths=full), reference=_onnx_reference)


# --- LinearAttention ------------------------------------------------------------------------


def _linear_attention(rule: str, *, q_heads=4, kv_heads=2, length=3, decay_dim=None, dtype=FLOAT):
    d_k = d_v = 4
    inputs = [
        ("q", dtype, [2, length, q_heads * d_k]),
        ("k", dtype, [2, length, kv_heads * d_k]),
        ("v", dtype, [2, length, kv_heads * d_v]),
        ("past", FLOAT, [2, kv_heads, d_k, d_v]),
        ("decay", dtype, [2, length, decay_dim]) if rule in ("gated", "gated_delta") else ("",) * 3,
        ("beta", dtype, [2, length, kv_heads]) if rule in ("delta", "gated_delta") else ("",) * 3,
    ]
    node = oh.make_node(
        "LinearAttention",
        [name for name, _, _ in inputs],
        ["y", "state"],
        q_num_heads=q_heads,
        kv_num_heads=kv_heads,
        update_rule=rule,
    )
    return _model(node, inputs, ["y", "state"], opset=27)


def _attention_feeds(model, seed=0):
    feeds = _feeds(model, seed, scale=0.5)
    for name in ("decay",):  # log-space decay: negative
        if name in feeds:
            feeds[name] = -np.abs(feeds[name])
    if "beta" in feeds:  # an update rate in (0, 1)
        feeds["beta"] = (1 / (1 + np.exp(-feeds["beta"]))).astype(feeds["beta"].dtype)
    return feeds


@pytest.mark.parametrize(
    ("rule", "decay_dim"), [("linear", None), ("gated", 2), ("delta", None), ("gated_delta", 8)]
)
def test_linear_attention_update_rules_with_grouped_heads_and_past_state(rule, decay_dim):
    # decay per KV head (2) or per key dim (2 heads · 4); the state is shared by 2 query heads.
    model = _linear_attention(rule, decay_dim=decay_dim)
    _check(model, _attention_feeds(model), reference=_onnx_reference)


def test_linear_attention_fp16_accumulates_in_float32():
    model = _linear_attention("gated_delta", decay_dim=2, dtype=FLOAT16)
    _check(model, _attention_feeds(model), reference=_onnx_reference, rtol=1e-3, atol=1e-3)


# --- CausalConvWithState --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "activation", "with_state"),
    [(4, "silu", True), (3, "none", False), (1, "swish", True)],
)
def test_causal_conv_with_state(kernel, activation, with_state):
    inputs = [
        ("x", FLOAT, [2, 3, 5]),
        ("w", FLOAT, [3, 1, kernel]),
        ("bias", FLOAT, [3]),
        ("past", FLOAT, [2, 3, kernel - 1]) if with_state and kernel > 1 else ("",) * 3,
    ]
    node = oh.make_node(
        "CausalConvWithState",
        [name for name, _, _ in inputs],
        ["y", "state"],
        activation=activation,
    )
    model = _model(node, inputs, ["y", "state"], opset=27)
    _check(model, _feeds(model), reference=_onnx_reference)
