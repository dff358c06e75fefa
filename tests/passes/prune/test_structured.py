"""``prune``: FFN neurons removed through whole blocks (shapes and weights shrink together), the
pruned model equal to the unpruned one with those neurons silenced, scores, and unstructured
sparsity."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from backends.onnxruntime.reference import run_reference
from compiler.calibration import Calibration
from compiler.errors import InputError, PassFailedError
from compiler.examples import make_example
from compiler.frontends.torch_module import load_torch
from compiler.model_info import model_stats
from compiler.pass_manager import PassContext, PassManager
from compiler.pipeline import build_passes
from passes.prune import PrunePass, prune_records


def _model(name: str):
    module, inputs, names = make_example(name, layers=2, hidden=64, heads=2, seq=8)
    model = load_torch(module, inputs, input_names=names, output_names=["out"])
    feed = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
    return PassManager(build_passes("cleanup")).run(model).model, feed, module


def _prune(model, text, feeds=None):
    context = PassContext(calibration=Calibration(feeds, "test") if feeds else None)
    return PassManager(build_passes(text), context=context).run(model).model


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_ffn_neurons_are_removed_through_the_whole_block(name):
    model, feed, _ = _model(name)
    before = model_stats(model)
    pruned = _prune(model.clone(), "prune(ratio=0.25,multiple=8)")
    records = prune_records(pruned)
    assert len(records) == 2  # one FFN block per layer
    features = records[0]["features"]
    assert all(r["kept"] == features * 3 // 4 for r in records)
    after = model_stats(pruned)
    up_count = len(records[0]["ups"])  # Llama: gate and up; BERT: one up (+ bias)
    hidden = 64
    removed_per_block = (features // 4) * hidden * (up_count + 1)
    # (random BERT's zero biases are one shared initializer: each block gets a pruned copy)
    assert before.parameters - after.parameters >= 0.95 * 2 * removed_per_block
    assert after.flops < before.flops
    ir.passes.common.CheckerPass(full_check=True)(pruned)  # shapes stay consistent
    out = run_reference(pruned, feed)["out"]
    assert out.shape == run_reference(model, feed)["out"].shape


def test_pruned_model_equals_the_model_with_those_neurons_zeroed():
    """Llama: zeroing the removed neurons' down-projection rows in the unpruned model gives the
    same outputs as physically removing them."""
    model, feed, _ = _model("llama")
    pruned = _prune(model.clone(), "prune(ratio=0.5,multiple=8)")
    silenced = model.clone()
    for record in prune_records(pruned):
        down = next(n for n in silenced.graph if n.name == record["node"])
        weight = down.inputs[1].const_value.numpy()
        kept_rows = {
            tuple(row)
            for row in next(n for n in pruned.graph if n.name == record["node"])
            .inputs[1]
            .const_value.numpy()
        }
        mask = np.array([tuple(row) in kept_rows for row in weight])
        assert mask.sum() == record["kept"]
        down.inputs[1].const_value = ir.tensor(
            np.where(mask[:, None], weight, 0).astype(weight.dtype)
        )
    np.testing.assert_allclose(
        run_reference(pruned, feed)["out"],
        run_reference(silenced, feed)["out"],
        rtol=1e-4,
        atol=1e-5,
    )


def test_wanda_scores_use_calibration_and_lose_less_than_magnitude():
    model, feed, _ = _model("llama")
    rng = np.random.default_rng(0)
    feeds = [{"input_ids": rng.integers(0, 1024, (1, 8))} for _ in range(4)]
    reference = run_reference(model, feed)["out"]
    errors = {}
    for score in ("magnitude", "wanda"):
        pruned = _prune(model.clone(), f"prune(ratio=0.5,multiple=8,score={score})", feeds)
        got = run_reference(pruned, feed)["out"]
        errors[score] = np.linalg.norm(got - reference) / np.linalg.norm(reference)
        assert prune_records(pruned)[0]["score"] == score
    assert errors["wanda"] < errors["magnitude"], errors
    with pytest.raises(PassFailedError, match="--calibration"):
        _prune(model.clone(), "prune(score=wanda)")


def test_unstructured_pruning_reports_sparsity_and_changes_no_shape():
    model, _, _ = _model("llama")
    before = model_stats(model)
    pruned = _prune(model.clone(), "prune(ratio=0.5,mode=unstructured)")
    records = prune_records(pruned)
    assert records and all(0.49 <= r["sparsity"] <= 0.51 for r in records)
    assert "no size or speed change" in records[0]["note"]
    assert model_stats(pruned).total_parameter_bytes == before.total_parameter_bytes


def test_bad_options_are_refused_and_ratio_zero_changes_nothing():
    with pytest.raises(InputError, match="ratio"):
        PrunePass(ratio=1.0)
    model, _, _ = _model("llama")
    assert not PrunePass(ratio=0.0)(model).modified


def test_pruned_model_compiles_with_tvm(tmp_path):
    from compiler.builder import build
    from compiler.runtime import load

    model, feed, _ = _model("llama")
    result = build(model, tmp_path / "a", passes="cleanup,prune(ratio=0.25,multiple=8)")
    assert result.report["accuracy"]["lossy_passes_applied"]
    out = load(tmp_path / "a")(feed)["out"]
    assert out.shape == (1, 8, 1024)
