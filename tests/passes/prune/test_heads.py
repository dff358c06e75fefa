"""``prune(mode=heads)``: attention heads removed through Q/K/V/O and every shape constant that
counts heads, GQA groups respected, the pruned model equal to the unpruned one with those heads
silenced, Wanda scores from calibration data, refusals recorded, and the TVM build."""

from __future__ import annotations

import collections
import functools

import numpy as np
import onnx_ir as ir
import pytest

from backends.onnxruntime.reference import ReferenceSession, run_reference
from compiler.calibration import Calibration
from compiler.errors import PassFailedError
from compiler.examples import make_example
from compiler.frontends.torch_module import load_torch
from compiler.model_info import model_stats
from compiler.pass_manager import PassContext, PassManager
from compiler.pipeline import build_passes
from passes.prune import prune_records

HIDDEN = 64
CONFIGS = {  # GQA: 8 query heads in 2 groups of 4; GPT-2: fused c_attn (Gemm + Split)
    "llama": {"heads": 8, "kv_heads": 2},
    "gpt2": {"heads": 4},
    "bert": {"heads": 4},
}


@functools.cache
def _exported(name: str):
    module, inputs, names = make_example(name, layers=2, hidden=HIDDEN, seq=8, **CONFIGS[name])
    model = load_torch(module, inputs, input_names=names, output_names=["out"])
    feed = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
    return PassManager(build_passes("cleanup")).run(model).model, feed


def _model(name: str):
    model, feed = _exported(name)
    return model.clone(), feed


def _prune(model, text, feeds=None):
    context = PassContext(calibration=Calibration(feeds, "test") if feeds else None)
    return PassManager(build_passes(text), context=context).run(model).model


def _node(model, name):
    return next(n for n in model.graph if n.name == name)


def _silence(model, records):
    """``model`` with the O-projection rows of every removed head set to zero."""
    silenced = model.clone()
    for record in records:
        o = _node(silenced, record["node"]).inputs[1]
        weight = o.const_value.numpy().copy()  # [H·D, hidden] (MatMul, Gemm transB=0)
        d = record["head_dim"]
        for h in set(range(record["heads"])) - set(record["heads_kept"]):
            weight[h * d : (h + 1) * d] = 0
        o.const_value = ir.tensor(weight)
    return silenced


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("llama", "ratio=0.5"),
        ("llama", "ratio=0.5,unit=group"),
        ("gpt2", "ratio=0.5"),
        ("bert", "ratio=0.25"),
    ],
)
def test_pruned_model_equals_the_model_with_those_heads_zeroed(name, options):
    model, feed = _model(name)
    before = model_stats(model)
    pruned = _prune(model.clone(), f"prune(mode=heads,{options})")
    records = prune_records(pruned)
    assert len(records) == 2 and all("heads_kept" in r for r in records), records
    ir.passes.common.CheckerPass(full_check=True)(pruned)
    got = run_reference(pruned, feed)["out"]
    unpruned = run_reference(model, feed)["out"]
    assert np.abs(got - unpruned).max() > 1e-3  # heads really went
    expected = run_reference(_silence(model, records), feed)["out"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Weights shrank physically: O keeps H'·D rows; parameters drop at least by O and Q.
    removed = 0
    for record in records:
        d, kept = record["head_dim"], len(record["heads_kept"])
        assert _node(pruned, record["node"]).inputs[1].const_value.shape[0] == kept * d
        removed += 2 * (record["heads"] - kept) * d * HIDDEN
    assert model_stats(model).parameters - model_stats(pruned).parameters >= 0.95 * removed
    assert model_stats(pruned).flops < before.flops


def test_gqa_query_heads_are_pruned_evenly_within_kv_groups():
    """Each KV head keeps the same number of query heads, K/V (and the KV cache) keep their
    shapes, and the repetition's Expand/Reshape shape constants follow (shared ones copied)."""
    model, feed = _model("llama")
    pruned = _prune(model.clone(), "prune(mode=heads,ratio=0.25)")
    for record in prune_records(pruned):
        assert record["unit"] == "query" and record["kv_heads_kept"] == [0, 1]
        per_group = collections.Counter(h // 4 for h in record["heads_kept"])
        assert per_group == {0: 3, 1: 3}  # round(4 · 0.75) of 4 in each group
        q, o = (_node(pruned, n) for n in record["projections"])  # K and V are untouched
        assert q.inputs[1].const_value.shape == (HIDDEN, 6 * 8)
        assert o.inputs[1].const_value.shape == (6 * 8, HIDDEN)
    expands = [n for n in pruned.graph if n.op_type == "Expand"]
    assert expands and all(n.inputs[1].const_value.numpy()[2] == 3 for n in expands)
    originals = [n for n in model.graph if n.op_type == "Expand"]
    assert all(n.inputs[1].const_value.numpy()[2] == 4 for n in originals)  # never edited
    kv_widths = {
        n.inputs[1].const_value.shape[1]
        for n in pruned.graph
        if n.op_type == "MatMul" and n.inputs[1].const_value is not None
    }
    assert 2 * 8 in kv_widths  # K and V projections: 2 KV heads × head_dim 8, unchanged
    np.testing.assert_allclose(
        run_reference(pruned, feed)["out"],
        run_reference(_silence(model, prune_records(pruned)), feed)["out"],
        rtol=1e-5,
        atol=1e-6,
    )


def test_whole_groups_remove_their_kv_heads():
    model, _ = _model("llama")
    pruned = _prune(model.clone(), "prune(mode=heads,ratio=0.5,unit=group)")
    for record in prune_records(pruned):
        (group,) = record["kv_heads_kept"]
        assert record["heads_kept"] == list(range(4 * group, 4 * group + 4))
        q, k, v, o = (_node(pruned, n) for n in record["projections"])
        assert k.inputs[1].const_value.shape == (HIDDEN, 8)  # one KV head of 8 left
        assert v.inputs[1].const_value.shape == (HIDDEN, 8)
        assert q.inputs[1].const_value.shape == (HIDDEN, 32)
        assert o.inputs[1].const_value.shape == (32, HIDDEN)


def test_wanda_ranks_heads_by_their_measured_output():
    """Wanda keeps the heads with the largest Σ_d ‖O row‖ · mean |attention output| on the
    calibration data (recomputed here with onnxruntime), and needs calibration data."""
    model, _ = _model("bert")
    rng = np.random.default_rng(0)
    feeds = [
        {"input_ids": rng.integers(0, 1024, (1, 8)), "attention_mask": np.ones((1, 8), np.int64)}
        for _ in range(4)
    ]
    pruned = _prune(model.clone(), "prune(mode=heads,ratio=0.5,score=wanda)", feeds)
    records = prune_records(pruned)
    names = [_node(model, r["node"]).inputs[0].name for r in records]
    session = ReferenceSession(model, extra_outputs=names)
    runs = [session.run(f) for f in feeds]
    for record, name in zip(records, names, strict=True):
        assert record["score"] == "wanda"
        x = np.concatenate([np.abs(r[name]).reshape(-1, r[name].shape[-1]) for r in runs])
        o = _node(model, record["node"]).inputs[1].const_value.numpy()
        scores = (np.linalg.norm(o, axis=1) * x.mean(0)).reshape(4, -1).sum(1)
        assert record["heads_kept"] == sorted(np.argsort(-scores)[:2].tolist())
    with pytest.raises(PassFailedError, match="--calibration"):
        _prune(model.clone(), "prune(mode=heads,score=wanda)")


def test_blocks_it_does_not_understand_are_skipped_with_a_reason():
    """Head-splitting Reshapes whose shapes are computed at run time cannot be rewritten: the
    blocks are recorded as skipped and the model is left alone."""
    model, feed = _model("llama")
    for reshape in [n for n in model.graph if n.op_type == "Reshape"]:
        identity = ir.node("Identity", [reshape.inputs[1]])
        model.graph.insert_before(reshape, identity)
        reshape.replace_input_with(1, identity.outputs[0])
    result = build_passes("prune(mode=heads,ratio=0.5)")[0](model)
    assert not result.modified
    records = prune_records(model)
    assert len(records) == 2
    assert all("computed at run time" in r["skipped"] for r in records), records
    assert run_reference(model, feed)["out"].shape == (1, 8, 1024)


def test_a_ratio_too_small_for_a_whole_head_changes_nothing():
    model, _ = _model("llama")
    result = build_passes("prune(mode=heads,ratio=0.1)")[0](model)
    assert not result.modified  # round(4 · 0.9) = 4 query heads per group stay
    assert all("removes no head" in r["skipped"] for r in prune_records(model))


def test_pruned_model_compiles_with_tvm(tmp_path):
    """``build`` verifies the TVM artifact against onnxruntime on the pruned model itself."""
    from compiler.builder import build
    from compiler.runtime import load

    model, feed = _model("llama")
    result = build(model, tmp_path / "a", passes="cleanup,prune(mode=heads,ratio=0.5)")
    assert result.report["accuracy"]["lossy_passes_applied"]
    assert [len(r["heads_kept"]) for r in result.report["accuracy"]["prune"]] == [4, 4]
    out = load(tmp_path / "a")(feed)["out"]
    assert out.shape == (1, 8, 1024)


FUSED_MHA = """
<ir_version: 10, opset_import: ["" : 18]>
attention (float[1, 4, 8] x, float[8, 24] wqkv, float[24] bqkv, float[8, 8] wo,
           int64[4] split_shape, int64[3] merge_shape, float scale) => (float[1, 4, 8] y)
{
    projected = MatMul(x, wqkv)
    qkv = Add(projected, bqkv)
    q, k, v = Split <axis = -1, num_outputs = 3> (qkv)
    q4 = Reshape(q, split_shape)
    k4 = Reshape(k, split_shape)
    v4 = Reshape(v, split_shape)
    qt = Transpose <perm = [0, 2, 1, 3]> (q4)
    kt = Transpose <perm = [0, 2, 3, 1]> (k4)
    vt = Transpose <perm = [0, 2, 1, 3]> (v4)
    scores = MatMul(qt, kt)
    scaled = Mul(scores, scale)
    probs = Softmax <axis = -1> (scaled)
    heads = MatMul(probs, vt)
    merged = Transpose <perm = [0, 2, 1, 3]> (heads)
    flat = Reshape(merged, merge_shape)
    y = MatMul(flat, wo)
}
"""


def test_fused_qkv_matmul_with_bias_add_and_explicit_head_count():
    """A hand-written MHA: one QKV MatMul + bias Add + Split, a head-splitting Reshape to the
    explicit ``[1, 4, 2, 4]`` shared by Q, K and V: the shared bias is sliced once per use, the
    Split gets explicit sizes, and both shape constants follow."""
    rng = np.random.default_rng(0)
    arrays = {
        "wqkv": rng.standard_normal((8, 24)).astype(np.float32),
        "bqkv": rng.standard_normal(24).astype(np.float32),
        "wo": rng.standard_normal((8, 8)).astype(np.float32),
        "split_shape": np.array([1, 4, 2, 4], np.int64),
        "merge_shape": np.array([1, 4, 8], np.int64),
        "scale": np.array(0.5, np.float32),
    }
    model = ir.from_onnx_text(
        FUSED_MHA, initializers=[ir.tensor(a, name=n) for n, a in arrays.items()]
    )
    ir.passes.common.RemoveInitializersFromInputsPass()(model)
    ir.passes.common.ShapeInferencePass()(model)
    for i, node in enumerate(model.graph):
        node.name = f"n{i}"
    feed = {"x": rng.standard_normal((1, 4, 8)).astype(np.float32)}
    pruned = _prune(model.clone(), "prune(mode=heads,ratio=0.5)")
    (record,) = prune_records(pruned)
    assert record["heads"] == 2 and len(record["heads_kept"]) == 1, record
    ir.passes.common.CheckerPass(full_check=True)(pruned)
    q_split = _node(pruned, "n3")  # Reshape(q, [1, 4, 2, 4]) -> [1, 4, 1, 4]
    assert q_split.inputs[1].const_value.numpy().tolist() == [1, 4, 1, 4]
    assert _node(pruned, "n14").inputs[1].const_value.numpy().tolist() == [1, 4, 4]
    np.testing.assert_allclose(
        run_reference(pruned, feed)["y"],
        run_reference(_silence(model, [record]), feed)["y"],
        rtol=1e-5,
        atol=1e-6,
    )
    split = next(n for n in pruned.graph if n.op_type == "Split")
    assert split.inputs[1].const_value.numpy().tolist() == [4, 4, 4]
