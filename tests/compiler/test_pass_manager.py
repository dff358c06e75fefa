from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from compiler.errors import NumericDriftError, PassFailedError
from compiler.instruments import (
    DumpInstrument,
    NumericCheckInstrument,
    StatsInstrument,
    TimingInstrument,
    VerifyInstrument,
    check_topological_order,
)
from compiler.pass_manager import Instrument, PassManager
from passes.cleanup import DeadCodeEliminationPass, IdentityEliminationPass
from tests.helpers import model_from_text, seeded_inputs

TEXT = """
g (float[2,3] x) => (float[2,3] y) <float[3] w = {1.0, 2.0, 3.0}> {
  a = Identity(x)
  b = Add(a, w)
  unused = Neg(b)
  y = Relu(b)
}
"""


class Boom(ir.passes.InPlacePass):
    name = "boom"

    def call(self, model):
        raise ValueError("kaboom")


class NeedsShapes(ir.passes.InPlacePass):
    name = "needs-shapes"

    def requires(self, model):
        if any(v.shape is None for node in model.graph for v in node.outputs):
            raise ir.passes.PreconditionError("every value needs a shape: run 'infer-shapes' first")

    def call(self, model):
        return ir.passes.PassResult(model, False)


class PerturbWeight(ir.passes.InPlacePass):
    """Adds 1 to the first weight: a deliberately wrong 'lossless' pass."""

    name = "perturb"

    def call(self, model):
        value = model.graph.initializers["w"]
        value.const_value = ir.tensor(value.const_value.numpy() + 1.0, name="w")
        return ir.passes.PassResult(model, True)


class Unsort(ir.passes.InPlacePass):
    """Moves the last node to the front, breaking topological order."""

    name = "unsort"

    def call(self, model):
        last = list(model.graph)[-1]
        model.graph.remove(last)
        model.graph.insert_before(next(iter(model.graph)), last)
        return ir.passes.PassResult(model, True)


def test_runs_passes_in_order_and_reports_modified():
    model = model_from_text(TEXT)
    result = PassManager([IdentityEliminationPass(), DeadCodeEliminationPass()]).run(model)
    assert result.applied == [("eliminate-identity", True), ("dce", True)]
    assert [n.op_type for n in result.model.graph] == ["Add", "Relu"]


def test_failure_names_the_pass_and_the_passes_before():
    model = model_from_text(TEXT)
    with pytest.raises(
        PassFailedError, match=r"pass 'boom' failed \(after eliminate-identity, dce\)"
    ):
        PassManager([IdentityEliminationPass(), DeadCodeEliminationPass(), Boom()]).run(model)


def test_precondition_failure_says_what_to_run_first():
    model = model_from_text(TEXT)
    for node in model.graph:
        for out in node.outputs:
            out.shape = None
    with pytest.raises(PassFailedError, match="run 'infer-shapes' first"):
        PassManager([NeedsShapes()]).run(model)


def test_instruments_are_called_around_every_pass():
    calls = []

    class Recorder(Instrument):
        def before_pipeline(self, model):
            calls.append("start")

        def before_pass(self, index, pass_, model):
            calls.append(f"before {index}")

        def after_pass(self, index, pass_, result):
            calls.append(f"after {index}")

        def after_pipeline(self, model):
            calls.append("end")

    timing, stats = TimingInstrument(), StatsInstrument()
    PassManager(
        [IdentityEliminationPass(), DeadCodeEliminationPass()], [Recorder(), timing, stats]
    ).run(model_from_text(TEXT))
    assert calls == ["start", "before 0", "after 0", "before 1", "after 1", "end"]
    assert [name for name, _ in timing.timings] == ["eliminate-identity", "dce"]
    assert stats.before.nodes == 4 and [s.nodes for _, _, s in stats.after] == [3, 2]


def test_steps_repeat_until_nothing_changes():
    result = PassManager([IdentityEliminationPass(), DeadCodeEliminationPass()], steps=3).run(
        model_from_text(TEXT)
    )
    # Round 1 changes the graph, round 2 does not, so round 3 never runs.
    assert len(result.applied) == 4


def test_numeric_checkpoint_names_the_drifting_pass():
    model = model_from_text(TEXT)
    check = NumericCheckInstrument(seeded_inputs(model))
    with pytest.raises(NumericDriftError, match=r"pass 'perturb' changed output 'y'") as info:
        PassManager(
            [IdentityEliminationPass(), PerturbWeight(), DeadCodeEliminationPass()], [check]
        ).run(model)
    assert info.value.pass_name == "perturb"
    assert info.value.passes_before == ["eliminate-identity"]
    assert check.records[0].errors == {"y": 0.0}


def test_verify_catches_a_pass_that_breaks_topological_order():
    with pytest.raises(PassFailedError, match="not in topological order"):
        PassManager([Unsort()], [VerifyInstrument()]).run(model_from_text(TEXT))


def test_check_topological_order_accepts_a_sorted_graph():
    check_topological_order(model_from_text(TEXT).graph)


def test_dump_writes_the_model_after_each_pass(tmp_path):
    dump = DumpInstrument(tmp_path / "dumps")
    PassManager([IdentityEliminationPass(), DeadCodeEliminationPass()], [dump]).run(
        model_from_text(TEXT)
    )
    names = sorted(p.name for p in (tmp_path / "dumps").iterdir())
    assert names == ["00-input.onnx", "01-eliminate-identity.onnx", "02-dce.onnx"]
    assert len(list(ir.load(tmp_path / "dumps" / "02-dce.onnx").graph)) == 2


def test_seeded_inputs_are_deterministic():
    model = model_from_text(TEXT)
    np.testing.assert_array_equal(seeded_inputs(model)["x"], seeded_inputs(model)["x"])
