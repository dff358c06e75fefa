"""Error budgets of lossy passes in a build: measured, reported per pass and per layer, and a
pass over its budget rolled back."""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common
import pytest

from compiler.accuracy import AccuracyBudget
from compiler.builder import build
from compiler.calibration import Calibration
from compiler.pass_manager import PassManager
from compiler.pipeline import build_passes
from compiler.runtime import load
from tests.passes.quantize.models import correlated_inputs, linear_model

pytestmark = pytest.mark.tvm


def _feeds(count: int, rows: int = 8, k: int = 64) -> list[dict[str, np.ndarray]]:
    return [{"x": correlated_inputs(rows, k, seed=s)[None]} for s in range(count)]


def test_a_pass_over_budget_is_rolled_back_and_the_next_is_measured_alone():
    model = linear_model(8, 64, 64, layers=2)
    budget = AccuracyBudget(_feeds(2), budget=0.02)
    passes = build_passes("quantize(bits=4,group=64,include=linear0),quantize(bits=8,group=0)")
    result = PassManager(passes, accuracy=budget).run(model)
    first, second = budget.records
    assert first.rolled_back and first.error > 0.02  # int4 on one layer costs more than 2%
    assert not second.rolled_back and 0 < second.error <= 0.02  # int8 fits
    assert result.applied == [("quantize", False), ("quantize", True)]
    ops = collections.Counter(n.op_type for n in result.model.graph)
    assert ops["DequantizeLinear"] == 2 and ops["MatMulNBits"] == 0  # int8 per channel only


def test_build_reports_accuracy_and_verifies_against_the_optimized_model(tmp_path):
    model = linear_model(8, 64, 64, layers=2)
    calibration = Calibration(_feeds(3), "three seeded batches")
    result = build(
        model,
        tmp_path / "int4",
        passes="quantize(bits=4,group=32,method=gptq)",
        calibration=calibration,
        max_error=0.5,
    )
    accuracy = result.report["accuracy"]
    assert accuracy["lossy_passes_applied"] and accuracy["budget"] == 0.5
    (record,) = accuracy["passes"]
    assert record["pass_name"] == "quantize" and not record["rolled_back"]
    assert accuracy["inputs"] == "3 calibration samples from three seeded batches"
    assert 0 < accuracy["error_vs_input_model"] < 0.5
    assert [layer["node"] for layer in accuracy["layers"]] == ["linear0", "linear1"]
    assert all(layer["output_error"] > 0 for layer in accuracy["layers"])
    verification = result.report["verification"]
    assert verification["reference"].startswith("onnxruntime (optimized model")
    assert verification["max_error"] <= 1e-5
    outputs = load(tmp_path / "int4")({"x": _feeds(1)[0]["x"]})
    assert outputs["y"].shape == (1, 8, 64)


def test_build_with_a_tight_budget_ships_the_unquantized_model(tmp_path):
    model = linear_model(8, 64, 64)
    result = build(model, tmp_path / "a", passes="quantize(bits=4)", max_error=1e-6)
    accuracy = result.report["accuracy"]
    assert accuracy["passes"][0]["rolled_back"]
    assert not accuracy["lossy_passes_applied"]
    shipped = ir.load(tmp_path / "a" / "model.onnx")
    assert [n.op_type for n in shipped.graph] == ["MatMul"]


def test_w8a8_builds_are_verified_by_relative_rms(tmp_path):
    """Quantized activations: single values may differ by a step between runtimes."""
    from compiler.builder import quantizes_activations

    model = linear_model(8, 64, 64, layers=2)
    result = build(model, tmp_path / "w8a8", passes="quantize(bits=8,group=0,activations=dynamic)")
    verification = result.report["verification"]
    assert verification["metric"].startswith("relative RMS")
    assert verification["relative_rms"] <= verification["tolerance"] == 0.1
    assert quantizes_activations(ir.load(tmp_path / "w8a8" / "model.onnx"))
    assert not quantizes_activations(linear_model(8, 64, 64))


def test_over_budget_quantize_is_retried_with_its_worst_layers_in_float():
    model = linear_model(8, 64, 64, layers=4)
    budget = AccuracyBudget(_feeds(2), budget=0.25)  # all four int4 layers: ~0.31
    result = PassManager(build_passes("quantize(bits=4,group=32)"), accuracy=budget).run(model)
    first, *retries = budget.records
    assert first.rolled_back and first.error > 0.25 and not first.kept_in_float
    assert retries and all(r.rolled_back for r in retries[:-1])
    final = retries[-1]
    assert not final.rolled_back and final.error <= 0.25
    assert final.pass_name == f"quantize (without {len(final.kept_in_float)} of 4 layers)"
    ops = {n.name: n.op_type for n in result.model.graph}
    assert all(ops[name] == "MatMul" for name in final.kept_in_float)
    assert sum(op == "MatMulNBits" for op in ops.values()) == 4 - len(final.kept_in_float)
    assert result.applied == [("quantize", True)]


def test_the_rollback_keeps_the_most_sensitive_layer_measured_alone():
    from passes.quantize import QuantizePass

    model = linear_model(8, 64, 64, layers=4)
    layers = {f"linear{i}" for i in range(4)}
    probe = AccuracyBudget(_feeds(2), budget=1.0)
    alone = {
        name: probe.probe(model, QuantizePass(bits=4, group=32).without_nodes(layers - {name})(
            model.clone()).model)
        for name in sorted(layers)
    }  # fmt: skip
    budget = AccuracyBudget(_feeds(2), budget=0.25)
    PassManager(build_passes("quantize(bits=4,group=32)"), accuracy=budget).run(model)
    first, retry = budget.records  # one retry suffices: 0.31 -> 0.248
    assert first.rolled_back and not retry.rolled_back
    assert retry.kept_in_float == [max(alone, key=alone.get)]


def _bigram_lm(vocab: int = 64, k: int = 32) -> ir.Model:
    """``logits = E[input_ids] · W``: the smallest causal LM (a bigram model)."""
    rng = np.random.default_rng(0)
    ids = ir.Value(name="input_ids", shape=ir.Shape([1, 16]), type=ir.TensorType(ir.DataType.INT64))
    inits = []
    for name, shape in (("embedding", (vocab, k)), ("head", (k, vocab))):
        array = rng.standard_normal(shape).astype(np.float32)
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        value.shape, value.dtype = ir.Shape(shape), ir.DataType.FLOAT
        inits.append(value)
    gather = ir.node("Gather", [inits[0], ids], name="embed")
    head = ir.node("MatMul", [gather.outputs[0], inits[1]], name="lm_head")
    head.outputs[0].name = "logits"
    graph = ir.Graph(
        [ids], [head.outputs[0]], nodes=[gather, head], initializers=inits, opset_imports={"": 18}
    )
    model = ir.Model(graph, ir_version=10)
    ir.passes.common.ShapeInferencePass()(model)
    return model


def test_perplexity_is_the_exponentiated_next_token_loss():
    from compiler.accuracy import perplexity

    ids = np.array([[3, 1, 4, 1, 5]])
    uniform = {"logits": np.zeros((1, 5, 8), np.float32)}
    assert perplexity([uniform], [{"input_ids": ids}]) == pytest.approx(8.0)
    sure = np.full((1, 5, 8), -30.0, np.float32)
    sure[0, np.arange(4), ids[0, 1:]] = 30.0  # each position predicts the next token
    assert perplexity([{"logits": sure}], [{"input_ids": ids}]) == pytest.approx(1.0)


def test_a_perplexity_budget_measures_the_relative_increase():
    from compiler.accuracy import perplexity

    model = _bigram_lm()
    rng = np.random.default_rng(1)
    feeds = [{"input_ids": rng.integers(0, 64, (1, 16))} for _ in range(3)]
    budget = AccuracyBudget(feeds, budget=10.0, metric="perplexity")
    result = PassManager(build_passes("quantize(bits=4,group=16)"), accuracy=budget).run(
        model.clone()
    )
    (record,) = budget.records
    expected = perplexity(_outputs(result.model, feeds), feeds) / perplexity(
        _outputs(model, feeds), feeds
    )
    assert record.error == pytest.approx(expected - 1.0, rel=1e-6) and record.error != 0
    with pytest.raises(Exception, match="metric"):
        AccuracyBudget(feeds, 1.0, metric="bleu")
    with pytest.raises(Exception, match="input_ids"):
        AccuracyBudget([{"x": np.zeros((1, 4), np.float32)}], 1.0, metric="perplexity").error(
            [{"logits": np.zeros((1, 4, 3))}], [{"logits": np.zeros((1, 4, 3))}]
        )


def _outputs(model, feeds):
    from compiler.accuracy import outputs_on

    return outputs_on(model, feeds)


def test_build_reports_perplexity_with_a_perplexity_budget(tmp_path):
    model = _bigram_lm()
    rng = np.random.default_rng(2)
    calibration = Calibration([{"input_ids": rng.integers(0, 64, (1, 16))} for _ in range(2)], "t")
    result = build(
        model,
        tmp_path / "lm",
        passes="quantize(bits=8,group=0)",
        calibration=calibration,
        max_error=0.05,
        metric="perplexity",
    )
    accuracy = result.report["accuracy"]
    assert accuracy["metric"] == "perplexity"
    ppl = accuracy["perplexity"]
    assert accuracy["error_vs_input_model"] == pytest.approx(
        ppl["optimized_model"] / ppl["input_model"] - 1.0
    )
    assert abs(accuracy["error_vs_input_model"]) < 0.05
