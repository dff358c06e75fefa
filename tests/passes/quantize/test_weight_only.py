"""The ``quantize`` pass: which nodes it rewrites, what onnxruntime computes from the result,
and the records and errors it reports."""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
import pytest

from backends.onnxruntime.reference import run_reference
from compiler.calibration import Calibration
from compiler.errors import InputError, PassFailedError, PipelineError
from compiler.pass_manager import PassContext, PassManager
from compiler.pipeline import build_passes
from passes.quantize import QuantizePass, quantize_records
from passes.quantize.grid import quantize_rtn
from tests.passes.quantize.models import correlated_inputs, linear_model


def _ops(model: ir.Model) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph)


def _run(model: ir.Model, text: str, calibration: Calibration | None = None) -> ir.Model:
    passes = build_passes(text)
    return PassManager(passes, context=PassContext(calibration=calibration)).run(model).model


@pytest.mark.parametrize("form", ["matmul", "gemm", "tied"])
@pytest.mark.parametrize(
    ("bits", "group", "symmetric"), [(4, 16, True), (4, 32, False), (8, 0, True), (8, 16, False)]
)
def test_onnxruntime_computes_exactly_the_dequantized_weights(form, bits, group, symmetric):
    """onnxruntime's MatMulNBits on our packing == x · dequantize(codes)ᵀ computed in numpy."""
    rows, k, n = 6, 40, 24  # K = 40 is not a multiple of the group: the last block is padded
    model = linear_model(rows, k, n, form=form)
    weight = model.graph.initializers["w0" if form != "tied" else "embedding"].const_value.numpy()
    weight = weight.T if form == "matmul" else weight
    x = correlated_inputs(rows, k).reshape(model.graph.inputs[0].shape.numpy())
    feeds = {"x": x, **({"ids": np.array([[0, 3, 5, 7]])} if form == "tied" else {})}
    quantized = _run(
        model.clone(), f"quantize(bits={bits},group={group},symmetric={str(symmetric).lower()})"
    )
    if (bits, group) == (8, 0):  # per channel: the standard DequantizeLinear + MatMul
        assert _ops(quantized)["DequantizeLinear"] == 1 and _ops(quantized)["MatMul"] == 1
        assert not {"Gemm", "Transpose", "MatMulNBits"} & set(_ops(quantized))
    else:
        assert _ops(quantized)["MatMulNBits"] == 1
        assert not {"MatMul", "Gemm", "Transpose"} & set(_ops(quantized))
    expected = (
        x.reshape(-1, k) @ quantize_rtn(weight, bits, group, symmetric=symmetric).dequantize().T
    )
    if form == "gemm":
        expected = expected + model.graph.initializers["b0"].const_value.numpy()
    got = run_reference(quantized, feeds)["y"].reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_include_and_exclude_select_nodes_by_name():
    model = linear_model(4, 32, 32, layers=3)
    only_middle = _run(model.clone(), "quantize(include=linear1)")
    assert [n.name for n in only_middle.graph if n.op_type == "MatMulNBits"] == ["linear1"]
    not_last = _run(model.clone(), "quantize(exclude='linear2$')")
    assert _ops(not_last)["MatMulNBits"] == 2 and _ops(not_last)["MatMul"] == 1


def test_ops_selects_by_op_type():
    tied = linear_model(4, 32, 64, form="tied")  # a Gather and a MatMul read one table
    head_only = _run(tied.clone(), "quantize(ops=MatMul)")
    assert _ops(head_only)["MatMulNBits"] == 1 and _ops(head_only)["Gather"] == 1
    table_only = _run(tied.clone(), "quantize(ops=Gather)")
    assert _ops(table_only)["GatherBlockQuantized"] == 1 and _ops(table_only)["MatMul"] == 1
    gemm = linear_model(4, 32, 32, form="gemm")
    assert _ops(_run(gemm.clone(), "quantize(ops='MatMul$')"))["Gemm"] == 1  # nothing matched
    with pytest.raises(InputError, match="ops="):
        QuantizePass(ops="(")


def test_records_per_layer_errors_and_drops_the_fp32_weights():
    model = linear_model(4, 64, 64, layers=2)
    fp32_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values())
    quantized = _run(model, "quantize(bits=4,group=32)")
    records = quantize_records(quantized)
    assert [r["node"] for r in records] == ["linear0", "linear1"]
    assert all(0 < r["weight_error"] < 0.2 and r["output_error"] is None for r in records)
    assert not {"w0", "w1"} & set(quantized.graph.initializers)
    int4_bytes = sum(v.const_value.nbytes for v in quantized.graph.initializers.values())
    assert int4_bytes < fp32_bytes * (0.5 + 4 / 32) / 4 + 64  # 4 bits + one fp32 scale per 32


def test_gptq_uses_calibration_and_lowers_the_output_error():
    rows, k = 64, 64
    model = linear_model(rows, k, 48)
    feeds = [{"x": correlated_inputs(rows, k, seed=s)[None]} for s in range(4)]
    calibration = Calibration(feeds, "test")
    held_out = {"x": correlated_inputs(rows, k, seed=99)[None]}
    expected = run_reference(model, held_out)["y"]
    errors = {}
    for method in ("rtn", "gptq"):
        quantized = _run(model.clone(), f"quantize(bits=4,group=16,method={method})", calibration)
        records = quantize_records(quantized)
        assert records[0]["method"] == method and records[0]["output_error"] > 0
        got = run_reference(quantized, held_out)["y"]
        errors[method] = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert errors["gptq"] < 0.8 * errors["rtn"], errors


def test_gptq_without_calibration_says_what_to_pass():
    with pytest.raises(PassFailedError, match="--calibration"):
        _run(linear_model(4, 32, 32), "quantize(method=gptq)")


@pytest.mark.parametrize("group", [8, 48, 100])
def test_bad_group_sizes_are_refused(group):
    with pytest.raises(InputError, match="power of two"):
        QuantizePass(group=group)


def test_a_model_without_weights_is_left_alone():
    model = linear_model(4, 8, 8)  # K = 8 < 16: MatMulNBits needs blocks of at least 16
    result = QuantizePass()(model)
    assert not result.modified and _ops(result.model)["MatMul"] == 1


@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (4, False), (8, False)])
def test_embedding_lookups_become_gather_block_quantized(bits, symmetric):
    model = linear_model(4, 40, 24, form="tied")
    table = model.graph.initializers["embedding"].const_value.numpy()
    text = f"quantize(bits={bits},group=16,symmetric={str(symmetric).lower()})"
    quantized = _run(model, text)
    assert _ops(quantized) == {"GatherBlockQuantized": 1, "MatMulNBits": 1}
    ids = np.array([[0, 3, 5, 23]])
    got = run_reference(quantized, {"x": correlated_inputs(4, 40)[None], "ids": ids})
    expected = quantize_rtn(table, bits, 16, symmetric=symmetric).dequantize()[ids[0]]
    np.testing.assert_array_equal(got["embedded"][0], expected)
    records = quantize_records(quantized)
    assert [(r["op"], r["method"]) for r in records] == [("MatMul", "rtn"), ("Gather", "tied")]
    assert "embedding" not in quantized.graph.initializers


def test_embeddings_can_stay_in_float():
    quantized = _run(linear_model(4, 40, 24, form="tied"), "quantize(embeddings=false)")
    assert _ops(quantized) == {"Gather": 1, "MatMulNBits": 1}
    assert "embedding" in quantized.graph.initializers


@pytest.mark.parametrize("activations", ["dynamic", "static"])
def test_w8a8_quantizes_activations_with_standard_ops(activations):
    rows, k = 16, 64
    model = linear_model(rows, k, k, layers=2)
    feeds = [{"x": correlated_inputs(rows, k, seed=s)[None]} for s in range(4)]
    quantized = _run(
        model.clone(),
        f"quantize(bits=8,group=0,activations={activations})",
        Calibration(feeds, "test"),
    )
    ops = _ops(quantized)
    assert ops["MatMulInteger"] == 2 and ops["MatMul"] == 0
    quantizer = "DynamicQuantizeLinear" if activations == "dynamic" else "QuantizeLinear"
    assert ops[quantizer] == 2
    held_out = {"x": correlated_inputs(rows, k, seed=50)[None]}
    expected = run_reference(model, held_out)["y"]
    got = run_reference(quantized, held_out)["y"]
    assert 0 < np.abs(got - expected).max() / np.abs(expected).max() < 0.03


def test_static_w8a8_calibrates_the_activation_grid():
    from compiler.calibration import activation_ranges
    from passes.quantize.w8a8 import activation_grid

    model = linear_model(8, 32, 32)
    feeds = [{"x": correlated_inputs(8, 32, seed=s)[None]} for s in range(3)]
    quantized = _run(
        model.clone(), "quantize(bits=8,group=0,activations=static)", Calibration(feeds, "t")
    )
    (q,) = [n for n in quantized.graph if n.op_type == "QuantizeLinear"]
    scale, zero = (v.const_value.numpy() for v in q.inputs[1:])
    low, high = activation_ranges(model, feeds, ["x"])["x"]
    assert low == min(f["x"].min() for f in feeds) and high == max(f["x"].max() for f in feeds)
    assert (scale, zero) == activation_grid(low, high)
    assert scale == pytest.approx((high - low) / 255)
    pct_low, pct_high = activation_ranges(model, feeds, ["x"], method="percentile", percentile=99)[
        "x"
    ]
    assert low < pct_low < pct_high < high  # percentiles clip the tails
    ent_low, ent_high = activation_ranges(model, feeds, ["x"], method="entropy")["x"]
    assert low < ent_low < 0 < ent_high < high  # the KL-optimal threshold clips too
    entropy = _run(
        model.clone(),
        "quantize(bits=8,group=0,activations=static,ranges=entropy)",
        Calibration(feeds, "t"),
    )
    (q,) = [n for n in entropy.graph if n.op_type == "QuantizeLinear"]
    assert (q.inputs[1].const_value.numpy(), q.inputs[2].const_value.numpy()) == activation_grid(
        ent_low, ent_high
    )


def test_w8a8_needs_int8_per_channel_weights_and_static_needs_calibration():
    with pytest.raises(InputError, match="bits=8, group=0"):
        QuantizePass(activations="dynamic")
    with pytest.raises(PassFailedError, match="--calibration"):
        _run(linear_model(4, 32, 32), "quantize(bits=8,group=0,activations=static)")


def test_int8_per_channel_on_a_tied_head_is_standard_dequantize_linear():
    model = linear_model(4, 40, 24, form="tied")
    quantized = _run(model, "quantize(bits=8,group=0)")
    assert _ops(quantized) == {"GatherBlockQuantized": 1, "DequantizeLinear": 1, "MatMul": 1}
    (dq,) = [n for n in quantized.graph if n.op_type == "DequantizeLinear"]
    assert dq.inputs[0].const_value.dtype == ir.DataType.INT8
    assert list(dq.inputs[0].shape) == [40, 24]  # [K, N]: no padding, no Transpose


def test_int8_per_channel_below_opset_13_uses_cast_and_mul():
    model = linear_model(4, 32, 32, layers=2)
    x = {"x": correlated_inputs(4, 32, seed=3)[None]}
    modern = _run(model.clone(), "quantize(bits=8,group=0)")
    old = model.clone()
    old.opset_imports[""] = 12  # per-axis DequantizeLinear does not exist yet
    legacy = _run(old, "quantize(bits=8,group=0,symmetric=false)")
    ops = _ops(legacy)
    assert ops["DequantizeLinear"] == 0 and ops["Cast"] == 4 and ops["Mul"] == 2
    assert legacy.opset_imports[""] == 12
    asymmetric = _run(model.clone(), "quantize(bits=8,group=0,symmetric=false)")
    np.testing.assert_allclose(
        run_reference(legacy, x)["y"], run_reference(asymmetric, x)["y"], rtol=1e-5, atol=1e-6
    )
    assert _ops(modern)["DequantizeLinear"] == 2


def test_accuracy_level_is_0_or_4_and_only_for_matmul_nbits():
    with pytest.raises(InputError, match="accuracy_level is 0"):
        QuantizePass(bits=4, accuracy_level=2)
    with pytest.raises(PipelineError, match="accuracy_level"):
        build_passes("quantize(bits=4,accuracy_level=2)")
    with pytest.raises(InputError, match="applies to MatMulNBits"):
        build_passes("quantize(bits=8,group=0,accuracy_level=4)")
    model = _run(linear_model(1, 64, 32), "quantize(bits=4,group=32,accuracy_level=4)")
    (node,) = [n for n in model.graph if n.op_type == "MatMulNBits"]
    assert node.attributes["accuracy_level"].as_int() == 4
