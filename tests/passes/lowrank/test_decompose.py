"""``lowrank``: the chosen rank meets the error budget, factorization only where it saves, and
the activation-aware variant reaches the same output error with a lower rank."""

from __future__ import annotations

import numpy as np
import pytest

from backends.onnxruntime.reference import run_reference
from compiler.calibration import Calibration
from compiler.errors import InputError
from compiler.model_info import model_stats
from compiler.pass_manager import PassContext, PassManager
from compiler.pipeline import build_passes
from passes.lowrank import LowRankPass, lowrank_records
from passes.lowrank.decompose import rank_for
from tests.passes.quantize.models import correlated_inputs, linear_model


def _low_rank_model(k=64, n=64, rank=8, noise=1e-3, rows=16):
    """One MatMul whose weight is rank ``rank`` plus a little noise."""
    model = linear_model(rows, k, n)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, rank)) @ rng.standard_normal((rank, n)) / np.sqrt(k)
    w += noise * rng.standard_normal((k, n))
    model.graph.initializers["w0"].const_value.__init__(w.astype(np.float32), name="w0")
    return model


def _run(model, text, feeds=None):
    context = PassContext(calibration=Calibration(feeds, "t") if feeds else None)
    return PassManager(build_passes(text), context=context).run(model).model


def test_rank_for_meets_the_budget():
    s = np.array([4.0, 2.0, 1.0, 0.5])
    rank, error = rank_for(s, 0.3)
    total = (s**2).sum()
    assert rank == 2 and error == pytest.approx(np.sqrt((1 + 0.25) / total))
    assert error <= 0.3 < np.sqrt((4 + 1 + 0.25) / total)
    assert rank_for(np.zeros(3), 0.1) == (1, 0.0)


def test_a_low_rank_weight_becomes_two_thinner_matmuls_within_budget():
    model = _low_rank_model()
    x = {"x": correlated_inputs(16, 64)[None]}
    expected = run_reference(model, x)["y"]
    before = model_stats(model)
    factored = _run(model.clone(), "lowrank(budget=0.01)")
    (record,) = lowrank_records(factored)
    assert record["applied"] and record["rank"] == 8 and record["error"] <= 0.01
    assert [n.op_type for n in factored.graph] == ["MatMul", "MatMul"]
    after = model_stats(factored)
    assert after.parameters < before.parameters and after.flops < before.flops
    got = run_reference(factored, x)["y"]
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.02


def test_full_rank_weights_are_left_alone():
    model = linear_model(4, 64, 64)  # random: full rank, the budget needs nearly every direction
    factored = _run(model.clone(), "lowrank(budget=0.01)")
    (record,) = lowrank_records(factored)
    assert not record["applied"] and record["parameters_after"] == record["parameters_before"]
    assert [n.op_type for n in factored.graph] == ["MatMul"]


def test_activation_aware_rank_is_lower_for_the_same_output_budget():
    """Inputs that live in a 16-dimensional subspace: only those directions of W matter."""
    k = 64
    model = linear_model(32, k, k)
    rng = np.random.default_rng(1)
    basis = rng.standard_normal((16, k)).astype(np.float32)
    feeds = [
        {"x": (rng.standard_normal((32, 16)).astype(np.float32) @ basis)[None]} for _ in range(8)
    ]
    plain = lowrank_records(_run(model.clone(), "lowrank(budget=0.05)"))[0]
    aware_model = _run(model.clone(), "lowrank(budget=0.05,method=activation,damp=1e-6)", feeds)
    aware = lowrank_records(aware_model)[0]
    assert aware["applied"] and aware["rank"] <= 16 < plain["rank"]
    held_out = {"x": (rng.standard_normal((32, 16)).astype(np.float32) @ basis)[None]}
    expected = run_reference(model, held_out)["y"]
    got = run_reference(aware_model, held_out)["y"]
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= 0.06


def test_options_are_checked():
    with pytest.raises(InputError, match="budget"):
        LowRankPass(budget=0.0)
    with pytest.raises(Exception, match="--calibration"):
        _run(linear_model(4, 32, 32), "lowrank(method=activation)")
