"""``partition(mode=tensor)``: Megatron-style sharding, equal to the unsharded model."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from backends.onnxruntime.reference import run_reference
from compiler.errors import InputError, PassFailedError
from compiler.pass_manager import PassManager
from compiler.pipeline import build_passes
from passes.partition import partition_plan
from passes.partition.split import split_shards
from passes.partition.tensor import GROUP_KEY, SEGMENT_KEY, SHARD_KEY
from tests.helpers import model_from_text, seeded_inputs, weights_text

FP32_RELATIVE = 1e-5  # max |a - b| / max |b|: only the summation order changes


def run(model: ir.Model, text: str) -> ir.Model:
    return PassManager(build_passes(text)).run(model).model


def relative_error(actual: dict, expected: dict) -> float:
    return max(
        float(np.abs(actual[k] - expected[k]).max() / np.abs(expected[k]).max()) for k in expected
    )


def assert_equal_in_onnxruntime(before: ir.Model, after: ir.Model, inputs=None) -> None:
    inputs = seeded_inputs(before) if inputs is None else inputs
    expected = run_reference(before, inputs)
    assert relative_error(run_reference(after, inputs), expected) <= FP32_RELATIVE
    # The pieces the build compiles compute the same, shard by shard, with the exchanges.
    plan = partition_plan(after)
    envs = [dict(inputs) for _ in range(plan["shards"])]
    for pieces, entry in zip(split_shards(after), plan["segments"], strict=True):
        produced = [
            run_reference(piece.model, {n: env[n] for n in piece.inputs})
            for piece, env in zip(pieces, envs, strict=True)
        ]
        for k, env in enumerate(envs):
            env.update(produced[k])
            for other, info in enumerate(entry["shards"]):
                env.update({n: produced[other][n] for n in info["exchange"]})
    assert relative_error({k: envs[0][k] for k in expected}, expected) <= FP32_RELATIVE


def text_model(text: str) -> ir.Model:
    """A model from ONNX text, each node named after its first output."""
    model = model_from_text(text)
    for node in model.graph:
        node.name = node.outputs[0].name
    return model


def block(seed: int = 0, width: int = 8, hidden: int = 32) -> ir.Model:
    """A transformer-style MLP block (up + bias, GELU, down + bias, residual), then a head
    whose output is the graph output."""
    rng = np.random.default_rng(seed)
    w = {
        "up": rng.standard_normal((width, hidden)).astype(np.float32) * 0.3,
        "up_bias": rng.standard_normal((hidden,)).astype(np.float32),
        "down": rng.standard_normal((hidden, width)).astype(np.float32) * 0.3,
        "down_bias": rng.standard_normal((width,)).astype(np.float32),
        "head": rng.standard_normal((width, 12)).astype(np.float32),
    }
    return text_model(
        f"""
        m (float[2,4,{width}] x) => (float[2,4,12] y) {weights_text(w)} {{
          h = MatMul(x, up)
          hb = Add(h, up_bias)
          g = Gelu(hb)
          d = MatMul(g, down)
          db = Add(d, down_bias)
          r = Add(x, db)
          y = MatMul(r, head)
        }}
        """
    )


def test_mlp_pairs_column_then_row_with_one_reduce():
    before = block()
    after = run(before.clone(), "partition(mode=tensor,shards=2)")
    plan = partition_plan(after)
    mlp, head = plan["groups"]
    assert (mlp["column"], mlp["row"], mlp["all_gather"]) == (["h"], ["d"], [])
    assert mlp["kind"] == "all-reduce" and mlp["exchange_bytes"] == 2 * 4 * 8 * 4
    assert (head["kind"], head["all_gather"]) == ("all-gather", ["y"])
    assert plan["replicated_matmuls"] == []
    ops = {}
    for node in after.graph:
        ops.setdefault(node.metadata_props.get(SHARD_KEY), []).append(node.op_type)
    # Each shard: its half of up (and of its bias), GELU, its rows of down, its head columns.
    assert ops["0"] == ops["1"] == ["MatMul", "Add", "Gelu", "MatMul", "MatMul"]
    # Replicated: the Sum, the bias once after it, the residual, the head's Concat.
    assert ops[None] == ["Sum", "Add", "Add", "Concat"]
    shapes = {
        v.name: list(v.shape)
        for n in after.graph
        for v in n.inputs
        if v is not None and v.is_initializer()
    }
    assert shapes["up__tp0"] == [8, 16] and shapes["down__tp1"] == [16, 8]
    assert shapes["up_bias__tp0"] == [16] and shapes["down_bias"] == [8]
    assert "up" not in after.graph.initializers  # the whole weights are gone
    assert_equal_in_onnxruntime(before, after)


def test_segments_chain_the_groups():
    after = run(block(), "partition(mode=tensor,shards=2)")
    plan = partition_plan(after)
    # Segment 0: the MLP's shards; 1: Sum, bias, residual and the head's shards; 2: Concat.
    assert [s["group"] for s in plan["segments"]] == [0, 1, None]
    first, second, last = plan["segments"]
    assert first["shards"][1] == {
        "nodes": 4,
        "inputs": ["x"],
        "outputs": ["d__tp1"],
        "exchange": ["d__tp1"],
    }
    assert second["shards"][0]["inputs"] == ["d__tp0", "d__tp1", "x"]
    assert last["shards"][0]["inputs"] == ["y__tp0", "y__tp1"]
    for node in after.graph:
        assert SEGMENT_KEY in node.metadata_props
        assert (SHARD_KEY in node.metadata_props) == (GROUP_KEY in node.metadata_props)


def test_gemm_bias_scales_and_transposed_weights():
    rng = np.random.default_rng(3)
    w = {
        "a": rng.standard_normal((16, 6)).astype(np.float32),  # transB: [N, K]
        "ab": rng.standard_normal((16,)).astype(np.float32),
        "b": rng.standard_normal((16, 6)).astype(np.float32),
        "bb": rng.standard_normal((1, 6)).astype(np.float32),
    }
    before = text_model(
        f"""
        m (float[5,6] x) => (float[5,6] y) {weights_text(w)} {{
          h = Gemm<transB=1, alpha=0.5, beta=2.0>(x, a, ab)
          t = Tanh(h)
          y = Gemm<beta=-1.0>(t, b, bb)
        }}
        """
    )
    after = run(before.clone(), "partition(mode=tensor,shards=4)")
    (group,) = partition_plan(after)["groups"]
    assert group["kind"] == "all-reduce"
    assert_equal_in_onnxruntime(before, after)


def test_shape_ops_and_replicated_operands_stay_sharded():
    """Unsqueeze, Expand, Reduce, Slice and Concat over other axes keep the columns sharded; a
    replicated activation that spans them (``m``) is sliced per shard by a ``Gather``."""
    rng = np.random.default_rng(4)
    w = {
        "w1": rng.standard_normal((8, 12)).astype(np.float32),
        "w2": rng.standard_normal((12, 5)).astype(np.float32),
        "zero": np.array([0]),
        "shape": np.array([3, 1, 1, 12]),
        "starts": np.array([1]),
        "ends": np.array([4]),
        "one": np.array([1]),
    }
    before = text_model(
        f"""
        m (float[2,4,8] x, float[2,4,12] v) => (float[2,7,5] y) {weights_text(w)} {{
          h = MatMul(x, w1)
          u = Unsqueeze(h, zero)
          e = Expand(u, shape)
          r = ReduceSum<keepdims=0>(e, zero)
          s = Slice(r, starts, ends, one)
          m = Neg(v)
          a = Add(r, m)
          c = Concat<axis=1>(s, a)
          y = MatMul(c, w2)
        }}
        """
    )
    after = run(before.clone(), "partition(mode=tensor,shards=2)")
    (group,) = partition_plan(after)["groups"]
    assert (group["kind"], group["all_gather"], group["sharded_nodes"]) == ("all-reduce", [], 8)
    slices = [n for n in after.graph if n.op_type == "Gather"]
    assert [n.metadata_props[SHARD_KEY] for n in slices] == ["0", "1"]
    assert_equal_in_onnxruntime(before, after)


def test_unpairable_block_falls_back_to_a_gather():
    """Softmax over the sharded axis needs the whole row: gather right after the matmul."""
    rng = np.random.default_rng(1)
    w = {"w": rng.standard_normal((8, 6)).astype(np.float32)}
    before = text_model(
        f"""
        m (float[3,8] x) => (float[3,6] y) {weights_text(w)} {{
          h = MatMul(x, w)
          y = Softmax<axis=-1>(h)
        }}
        """
    )
    after = run(before.clone(), "partition(mode=tensor,shards=2)")
    (group,) = partition_plan(after)["groups"]
    assert (group["kind"], group["all_gather"]) == ("all-gather", ["h"])
    assert [n.op_type for n in after.graph] == ["MatMul", "MatMul", "Concat", "Softmax"]
    assert_equal_in_onnxruntime(before, after)


def test_gpt2_attention_and_mlp_pair_head_aligned(exported):
    """Fused QKV: the columns are taken head by head from each of Q, K and V, so attention
    runs on the shards and only c_proj's output is reduced; the LM head is gathered."""
    before = run(ir.load(exported("gpt2")), "cleanup")
    after = run(before.clone(), "partition(mode=tensor,shards=2)")
    plan = partition_plan(after)
    kinds = [g["kind"] for g in plan["groups"]]
    assert kinds == ["all-reduce"] * 4 + ["all-gather"]  # 2 layers × (attention, MLP), head
    assert all(not g["all_gather"] for g in plan["groups"][:4])
    assert plan["groups"][-1]["all_gather"] == ["logits"]
    assert plan["replicated_matmuls"] == []
    assert len(plan["segments"]) == 6
    # The attention of each shard has half the heads: [1, 2, 32, 64] scores per shard.
    scores = [n for n in after.graph if n.op_type == "Softmax"]
    assert len(scores) == 4 and all(list(n.outputs[0].shape) == [1, 2, 32, 32] for n in scores)
    rng = np.random.default_rng(0)
    inputs = {"input_ids": rng.integers(0, 1024, (1, 32)).astype(np.int64)}
    assert_equal_in_onnxruntime(before, after, inputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "bert"])
def test_other_architectures(exported, name):
    """Llama (separate q/k/v and gate/up sharded together, rotary, GQA) and BERT."""
    before = run(ir.load(exported(name)), "cleanup")
    after = run(before.clone(), "partition(mode=tensor,shards=2)")
    plan = partition_plan(after)
    assert all(g["kind"] == "all-reduce" for g in plan["groups"][:4])
    inputs = seeded_inputs(before)
    inputs["input_ids"] = np.random.default_rng(0).integers(0, 1024, (1, 32)).astype(np.int64)
    assert_equal_in_onnxruntime(before, after, inputs)


def test_a_weight_shards_do_not_divide_stays_whole():
    """N=6 splits 3 ways (and the matmul after it by rows); N=5 does not: replicated."""
    rng = np.random.default_rng(2)
    w = {
        "a": rng.standard_normal((4, 6)).astype(np.float32),
        "b": rng.standard_normal((6, 4)).astype(np.float32),
        "c": rng.standard_normal((4, 5)).astype(np.float32),
    }
    before = text_model(
        f"""
        m (float[2,4] x) => (float[2,4] y, float[2,5] z) {weights_text(w)} {{
          h = MatMul(x, a)
          r = Relu(h)
          y = MatMul(r, b)
          z = MatMul(x, c)
        }}
        """
    )
    after = run(before.clone(), "partition(mode=tensor,shards=3)")
    plan = partition_plan(after)
    assert [(g["column"], g["row"]) for g in plan["groups"]] == [(["h"], ["y"])]
    assert plan["replicated_matmuls"] == [
        {
            "node": "z",
            "op": "MatMul",
            "weight": [4, 5],
            "reason": "N=5 is not a multiple of shards=3",
        }
    ]
    assert_equal_in_onnxruntime(before, after)


def test_bad_options_are_refused():
    with pytest.raises(InputError, match="shards must be at least 2, not 1"):
        build_passes("partition(mode=tensor,shards=1)")
    with pytest.raises(InputError, match="shards=2 is an option of mode=tensor"):
        build_passes("partition(shards=2)")
    rng = np.random.default_rng(2)
    w = {"a": rng.standard_normal((4, 6)).astype(np.float32)}
    model = text_model(
        f"m (float[2,4] x) => (float[2,6] y) {weights_text(w)} {{ y = MatMul(x, a) }}"
    )
    with pytest.raises(PassFailedError, match=r"'y' \(MatMul, weight \[4, 6\]\): N=6 is not"):
        run(model, "partition(mode=tensor,shards=4)")
    twice = run(block(), "partition(mode=tensor)")
    with pytest.raises(PassFailedError, match="partitioned already"):
        run(twice, "partition(mode=tensor)")
    plain = model_from_text("m (float[2,4] x) => (float[2,4] y) { y = Relu(x) }")
    with pytest.raises(PassFailedError, match="no MatMul/Gemm with a constant 2-D weight"):
        run(plain, "partition(mode=tensor)")
