"""``partition``: pipeline stages balanced by cost, few crossing bytes, numerics unchanged."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx_ir as ir
import pytest

from backends.onnxruntime.reference import run_reference
from compiler.errors import PassFailedError
from compiler.pass_manager import PassManager
from compiler.pipeline import build_passes
from passes.partition import STAGE_KEY, partition_plan, split_stages
from passes.partition.pipeline import choose_cuts
from tests.helpers import assert_same_outputs, model_from_text, seeded_inputs, weights_text


def mlp(layers: int, width: int = 16, seed: int = 0) -> ir.Model:
    """``layers`` equal blocks (MatMul, Add, Relu), with a skip from the input to the end."""
    rng = np.random.default_rng(seed)
    weights, lines, prev = {}, [], "x"
    for i in range(layers):
        weights[f"w{i}"] = rng.standard_normal((width, width)).astype(np.float32) * 0.3
        weights[f"b{i}"] = rng.standard_normal((width,)).astype(np.float32)
        lines += [f"m{i} = MatMul({prev}, w{i})", f"a{i} = Add(m{i}, b{i})", f"r{i} = Relu(a{i})"]
        prev = f"r{i}"
    lines.append(f"y = Add({prev}, x)")
    body = "\n".join(lines)
    return model_from_text(
        f"mlp (float[4,{width}] x) => (float[4,{width}] y) {weights_text(weights)} {{ {body} }}"
    )


def run(model: ir.Model, text: str) -> ir.Model:
    return PassManager(build_passes(text)).run(model).model


def test_stages_are_balanced_and_annotated():
    model = run(mlp(6), "partition(stages=3)")
    plan = partition_plan(model)
    assert [s["nodes"] for s in plan["stages"]] == [6, 6, 7]  # two blocks each, + the skip Add
    stages = [int(n.metadata_props[STAGE_KEY]) for n in model.graph]
    assert stages == sorted(stages) and set(stages) == {0, 1, 2}
    # The skip connection (x) is a graph input: handed to the last stage, not shipped along.
    assert plan["stages"][2]["inputs"] == ["r3", "x"]
    assert [(e["from"], e["to"], e["values"]) for e in plan["edges"]] == [
        (0, 1, ["r1"]),
        (1, 2, ["r3"]),
    ]
    assert plan["crossing_bytes"] == 2 * 4 * 16 * 4


def test_numerics_unchanged_and_stages_compose():
    before = mlp(5)
    after = run(before.clone(), "partition(stages=2)")
    assert_same_outputs(before, after, tolerance=0.0)
    inputs = seeded_inputs(before)
    env = dict(inputs)
    for stage in split_stages(after):
        assert not any(STAGE_KEY in n.metadata_props for n in stage.model.graph)
        env.update(run_reference(stage.model, {k: env[k] for k in stage.inputs}))
    expected = run_reference(before, inputs)
    np.testing.assert_array_equal(env["y"], expected["y"])


def test_each_stage_keeps_only_its_weights():
    stages = split_stages(run(mlp(4), "partition(stages=2)"))
    names = [set(s.model.graph.initializers) for s in stages]
    assert names == [{"w0", "b0", "w1", "b1"}, {"w2", "b2", "w3", "b3"}]


def brute_force(costs, cross, stages, balance):
    n = len(costs)
    best_bottleneck = min(
        max(sum(costs[a:b]) for a, b in itertools.pairwise([0, *cut, n]))
        for cut in itertools.combinations(range(1, n), stages - 1)
    )
    feasible = [
        cut
        for cut in itertools.combinations(range(1, n), stages - 1)
        if max(sum(costs[a:b]) for a, b in itertools.pairwise([0, *cut, n]))
        <= best_bottleneck * (1 + balance) * (1 + 1e-9)
    ]
    return min(sum(cross[i] for i in cut) for cut in feasible)


@pytest.mark.parametrize("seed", range(6))
def test_dynamic_program_is_exact(seed):
    rng = np.random.default_rng(seed)
    n, stages = 9, 3
    costs = rng.uniform(1, 3, n)
    cross = np.concatenate([[0], rng.integers(1, 100, n - 1)]).astype(float)
    balance = [0.0, 0.2, 0.5][seed % 3]
    cuts = choose_cuts(costs, cross, stages, balance)
    assert len(cuts) == stages - 1
    assert sum(cross[i] for i in cuts) == brute_force(list(costs), cross, stages, balance)


def test_cut_avoids_wide_activations():
    """Between two equal halves, the cut moves to where only the narrow value is live."""
    rng = np.random.default_rng(0)
    w = {
        "up": rng.standard_normal((8, 256)).astype(np.float32),
        "down": rng.standard_normal((256, 8)).astype(np.float32),
        "up2": rng.standard_normal((8, 256)).astype(np.float32),
        "down2": rng.standard_normal((256, 8)).astype(np.float32),
    }
    model = model_from_text(
        f"""
        m (float[64,8] x) => (float[64,8] y) {weights_text(w)} {{
          h = MatMul(x, up)
          g = Relu(h)
          d = MatMul(g, down)
          h2 = MatMul(d, up2)
          g2 = Relu(h2)
          y = MatMul(g2, down2)
        }}
        """
    )
    plan = partition_plan(run(model, "partition(stages=2,balance=0.5)"))
    assert plan["edges"][0]["values"] == ["d"]  # [64, 8], not the [64, 256] ones


def test_profile_overrides_the_estimate(tmp_path):
    model = mlp(4)
    for i, node in enumerate(model.graph):
        node.name = f"n{i}"
    names = [n.name for n in model.graph]
    profile = {name: (1.0 if name == names[0] else 0.01) for name in names}  # node 0 dominates
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    plan = partition_plan(run(model, f"partition(stages=2,profile='{tmp_path / 'profile.json'}')"))
    assert plan["cost_model"] == "profile"
    assert plan["stages"][0]["nodes"] == 1


def test_refuses_more_stages_than_nodes():
    with pytest.raises(PassFailedError, match="3 stages asked for a graph of 2 nodes"):
        run(
            model_from_text("m (float[2] x) => (float[2] y) { a = Relu(x)\n y = Neg(a) }"),
            "partition(stages=3)",
        )


def test_gpt2_balance_trades_evenness_for_bytes(exported):
    model = ir.load(exported("gpt2"))
    tight = partition_plan(run(model.clone(), "cleanup,partition(stages=2,balance=0)"))
    loose = partition_plan(run(model, "cleanup,partition(stages=2,balance=0.15)"))
    for plan, limit in ((tight, 1.0), (loose, 1.15)):
        costs = [s["cost_s"] for s in plan["stages"]]
        assert max(costs) <= limit * min(max(c["cost_s"] for c in tight["stages"]), 1e9) * 1.0001
    # With slack, the cut moves onto the residual stream: one [1, 32, 256] float tensor.
    assert loose["crossing_bytes"] == 32 * 256 * 4 < tight["crossing_bytes"]
