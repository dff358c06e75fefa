"""SmoothQuant migration (passes/quantize/smooth.py), per-token W8A8 (passes/quantize/w8a8.py)."""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common
import pytest

from backends.onnxruntime.reference import run_reference
from compiler.calibration import Calibration, input_gram_matrices
from compiler.errors import InputError
from compiler.pass_manager import PassContext, PassManager
from compiler.pipeline import build_passes
from passes.quantize import QuantizePass
from passes.quantize.smooth import smooth_inputs, smoothing_factors
from passes.quantize.weight_only import _targets
from tests.passes.quantize.models import correlated_inputs, linear_model


def _layernorm_model(rows: int = 16, k: int = 64, seed: int = 0) -> ir.Model:
    """``y = LN(x)·Wq + LN(x)·Wk``: two matmuls share one LayerNorm output (like Q and K)."""
    rng = np.random.default_rng(seed)
    x = ir.Value(name="x", shape=ir.Shape([1, rows, k]), type=ir.TensorType(ir.DataType.FLOAT))
    inits = {}
    for name, array in {
        "gamma": rng.uniform(0.5, 2.0, k).astype(np.float32),
        "beta": rng.standard_normal(k).astype(np.float32),
        "wq": (rng.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32),
        "wk": (rng.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32),
    }.items():
        inits[name] = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        inits[name].shape, inits[name].dtype = ir.Shape(array.shape), ir.DataType.FLOAT
    inits["gamma"].const_value.numpy()[:4] *= 30  # LayerNorm outlier channels, as in BERT
    ln = ir.node("LayerNormalization", [x, inits["gamma"], inits["beta"]], name="ln")
    q = ir.node("MatMul", [ln.outputs[0], inits["wq"]], name="q")
    k_ = ir.node("MatMul", [ln.outputs[0], inits["wk"]], name="k")
    add = ir.node("Add", [q.outputs[0], k_.outputs[0]], name="add")
    add.outputs[0].name = "y"
    graph = ir.Graph(
        [x], [add.outputs[0]], nodes=[ln, q, k_, add], initializers=list(inits.values()),
        opset_imports={"": 18},
    )  # fmt: skip
    model = ir.Model(graph, ir_version=10)
    ir.passes.common.ShapeInferencePass()(model)
    return model


def _feeds(rows: int, k: int, count: int, start: int = 0) -> list[dict[str, np.ndarray]]:
    return [{"x": correlated_inputs(rows, k, seed=s)[None]} for s in range(start, start + count)]


def _smoothed(model: ir.Model, feeds, alpha: float) -> dict[str, dict]:
    targets = _targets(model.graph, "", "")
    names = sorted({t.node.inputs[0].name for t in targets})
    stats = input_gram_matrices(model, feeds, names)
    x_max = {name: s.abs_max for name, s in stats.items()}
    return smooth_inputs(model.graph, targets, x_max, alpha)


def test_smoothing_factors_follow_the_smoothquant_formula():
    x_max = np.array([8.0, 1.0, 0.0, 4.0])
    w_max = np.array([0.5, 2.0, 1.0, 0.0])
    s = smoothing_factors(x_max, w_max, 0.5)
    np.testing.assert_allclose(s[:2], [np.sqrt(8.0 / 0.5), np.sqrt(1.0 / 2.0)], rtol=1e-6)
    assert s[2] == 1.0 and s[3] == 1.0  # dead channels are left alone
    np.testing.assert_allclose(smoothing_factors(x_max, w_max, 1.0)[:2], [8.0, 1.0])


@pytest.mark.parametrize("kind", ["layernorm", "mul"])
def test_smoothing_keeps_the_float_model_equivalent(kind):
    model = _layernorm_model() if kind == "layernorm" else linear_model(16, 64, 64, layers=2)
    feeds = _feeds(16, 64, 3)
    expected = run_reference(model, feeds[0])["y"]
    before = collections.Counter(n.op_type for n in model.graph)
    records = _smoothed(model, feeds, 0.5)
    assert {r["smoothing"] for r in records.values()} == {kind}
    after = collections.Counter(n.op_type for n in model.graph)
    added = after - before
    assert added == (collections.Counter() if kind == "layernorm" else collections.Counter(Mul=2))
    got = run_reference(model, feeds[0])["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # The inputs the matmuls see now have flatter channels.
    assert all(r["input_max_after"] < r["input_max_before"] for r in records.values())


def test_matmuls_sharing_an_input_share_one_factor():
    model = _layernorm_model()
    records = _smoothed(model, _feeds(16, 64, 2), 0.5)
    assert records["q"] is records["k"]
    (ln,) = [n for n in model.graph if n.op_type == "LayerNormalization"]
    assert all(v.name.endswith("_smoothed") for v in ln.inputs[1:])
    assert "gamma" not in model.graph.initializers  # the unsmoothed copies are gone


def _w8a8_error(model: ir.Model, options: str, calibration: list, held_out: dict) -> float:
    passes = build_passes(f"quantize(bits=8,group=0,{options})")
    context = PassContext(calibration=Calibration(calibration, "test"))
    quantized = PassManager(passes, context=context).run(model.clone()).model
    expected = run_reference(model, held_out)["y"]
    got = run_reference(quantized, held_out)["y"]
    return float(np.sqrt(((got - expected) ** 2).mean() / (expected**2).mean()))


def test_smoothing_lowers_the_w8a8_error_on_outlier_channels():
    model = _layernorm_model()
    calibration, held_out = _feeds(16, 64, 4), _feeds(16, 64, 1, start=50)[0]
    plain = _w8a8_error(model, "activations=dynamic", calibration, held_out)
    smooth = _w8a8_error(model, "activations=dynamic,smooth=0.5", calibration, held_out)
    assert smooth < 0.5 * plain, (plain, smooth)


def test_per_token_w8a8_computes_the_per_row_grid():
    rows, k = 8, 32
    model = linear_model(rows, k, k)
    passes = build_passes("quantize(bits=8,group=0,activations=dynamic,granularity=token)")
    quantized = PassManager(passes).run(model.clone()).model
    ops = collections.Counter(n.op_type for n in quantized.graph)
    assert ops["MatMulInteger"] == 1 and ops["MatMul"] == 0 and ops["DynamicQuantizeLinear"] == 0
    x = correlated_inputs(rows, k, seed=3)
    x[2] *= 40.0  # one loud token
    got = run_reference(quantized, {"x": x[None]})["y"][0]
    # numpy: asymmetric uint8 per row, int8 per-channel weights.
    weight = model.graph.initializers["w0"].const_value.numpy()  # [K, N]
    w_scale = np.abs(weight).max(axis=0) / 127
    w_q = np.clip(np.round(weight / w_scale), -127, 127)
    low, high = np.minimum(x.min(1, keepdims=True), 0), np.maximum(x.max(1, keepdims=True), 0)
    scale = (high - low) / 255
    zero = np.round(-low / scale)
    x_q = np.clip(np.round(x / scale) + zero, 0, 255)
    expected = ((x_q - zero) @ w_q) * scale * w_scale
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_per_token_beats_per_tensor_when_token_magnitudes_differ():
    rows, k = 16, 64
    model = linear_model(rows, k, k, layers=2)

    def feed(seed):
        x = correlated_inputs(rows, k, seed=seed)
        x[0] *= 50.0  # an attention-sink-like token with huge values
        return {"x": x[None]}

    calibration, held_out = [feed(s) for s in range(2)], feed(60)
    tensor = _w8a8_error(model, "activations=dynamic", calibration, held_out)
    token = _w8a8_error(model, "activations=dynamic,granularity=token", calibration, held_out)
    assert token < 0.5 * tensor, (tensor, token)


def test_smoothing_and_per_token_options_are_checked():
    with pytest.raises(InputError, match="activations=dynamic or static"):
        QuantizePass(bits=8, group=0, smooth=0.5)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        QuantizePass(bits=8, group=0, activations="dynamic", smooth=1.5)
    with pytest.raises(InputError, match="activations=dynamic"):
        QuantizePass(bits=8, group=0, activations="static", granularity="token")
