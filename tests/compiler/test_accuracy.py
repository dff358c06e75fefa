"""Error budgets of lossy passes in a build: measured, reported per pass and per layer, and a
pass over its budget rolled back."""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
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
