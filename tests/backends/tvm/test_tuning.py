"""MetaSchedule tuning into a JSON database, resumed and reused by builds."""

from __future__ import annotations

import json

import pytest
import tvm

from backends.onnxruntime.reference import run_reference
from backends.tvm import compile_model
from backends.tvm.tuning import open_database, rules_version, tune_model
from compiler.errors import BackendError
from compiler.numerics import max_error
from tests.helpers import model_from_text, seeded_inputs

pytestmark = pytest.mark.tvm

# One fused elementwise kernel (the float MatMul-free graph leaves TVM one task to tune).
TEXT = """
g (float[64,256] x, float[64,256] z) => (float[64,256] y) {
  two = Constant <value = float {2.0}> ()
  a = Mul(x, two)
  b = Add(a, z)
  y = Relu(b)
}
"""


def test_tune_resume_and_build_with_the_database(tmp_path):
    model = model_from_text(TEXT)
    db = tmp_path / "db"
    first = tune_model(model, db, budget_s=300, trials_per_task=4)
    assert first.tasks >= 1 and first.tuned and not first.skipped
    assert all(us > 0 for us in first.best_us.values())
    # our schedule rules' kernel is measured too, and competes as one more record
    assert sorted(first.rules_us) == sorted(first.tuned)
    assert all(first.best_us[name] <= us for name, us in first.rules_us.items())
    rules = json.loads((db / "rules.json").read_text())
    assert rules["version"] == rules_version() and len(rules["records"]) == first.tasks
    again = tune_model(model_from_text(TEXT), db, budget_s=300, trials_per_task=4)
    assert again.tuned == [] and sorted(again.skipped) == sorted(first.tuned)
    records = len((db / "database_tuning_record.json").read_text().splitlines())
    # rules of another version: their kernels are measured and committed again, nothing tuned
    (db / "rules.json").write_text(json.dumps({"version": "old", "records": rules["records"]}))
    changed = tune_model(model_from_text(TEXT), db, budget_s=300, trials_per_task=4)
    assert changed.tuned == [] and sorted(changed.rules_us) == sorted(first.tuned)
    assert len((db / "database_tuning_record.json").read_text().splitlines()) == records + len(
        first.tuned
    )
    assert json.loads((db / "rules.json").read_text())["version"] == rules_version()

    compiled = compile_model(model_from_text(TEXT), "llvm", tuning_db=db)
    assert compiled.tuned_kernels == first.tasks
    vm = tvm.runtime.vm.VirtualMachine(compiled.executable, tvm.cpu())
    inputs = seeded_inputs(model)
    out = vm["main"](*[tvm.runtime.tensor(inputs[n]) for n in compiled.input_names])
    errors = max_error({"y": out.numpy()}, run_reference(model, inputs))
    assert errors["y"] <= 1e-6


def test_a_zero_budget_tunes_nothing(tmp_path):
    result = tune_model(model_from_text(TEXT), tmp_path / "db", budget_s=0, trials_per_task=4)
    assert result.tuned == [] and result.stopped_by_budget


def test_open_database_refuses_other_folders(tmp_path):
    with pytest.raises(BackendError, match="not a tuning database"):
        open_database(tmp_path)
