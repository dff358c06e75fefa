"""Partitioned artifacts: one library per stage, run in-process and on worker processes."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import compiler.runtime
from compiler.builder import build
from compiler.errors import ArtifactError
from compiler.stages import PipelineModel, ProcessPipeline, assign_stages
from compiler.tensor_parallel import ShardedModel, ShardWorkers
from tests.passes.test_partition import mlp

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The same 6-block MLP built whole and in 3 stages."""
    root = tmp_path_factory.mktemp("stages")
    model = mlp(6, width=32)
    build(model, root / "whole", latency_runs=0)
    result = build(model, root / "staged", passes="partition(stages=3)", latency_runs=0)
    return root / "whole", root / "staged", result


def feeds(count: int):
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((4, 32)).astype(np.float32)} for _ in range(count)]


def test_artifact_layout_and_manifest(artifacts):
    _, _, result = artifacts
    manifest = result.manifest
    assert manifest["library"] is None
    assert [s["path"] for s in manifest["stages"]] == ["stages/0", "stages/1", "stages/2"]
    assert {f"stages/{i}/model.so" for i in range(3)} <= set(manifest["files"])
    assert [(e["from"], e["to"]) for e in manifest["stage_edges"]] == [(0, 1), (1, 2)]
    assert result.report["verification"]["passed"]  # checked against onnxruntime
    assert len(result.report["partition"]["stages"]) == 3


def test_in_process_matches_the_whole_model(artifacts):
    whole, staged, _ = artifacts
    model = compiler.runtime.load(staged)
    assert isinstance(model, PipelineModel)
    reference = compiler.runtime.load(whole)
    for inputs in feeds(3):
        np.testing.assert_allclose(model(inputs)["y"], reference(inputs)["y"], rtol=1e-6)
    assert len(model.profile(feeds(1)[0], runs=2)) == 3


def test_tampered_stage_is_refused(artifacts, tmp_path):
    _, staged, _ = artifacts
    copy = tmp_path / "copy"
    shutil.copytree(staged, copy)
    with open(copy / "stages/1/weights.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\0\0\0\1")
    with pytest.raises(ArtifactError, match="stages/1/weights.safetensors"):
        compiler.runtime.load(copy)


def test_assign_stages():
    assert assign_stages(4, 2) == [[0, 1], [2, 3]]
    assert assign_stages(3, 2) == [[0, 1], [2]]
    assert assign_stages(3, 3) == [[0], [1], [2]]


def test_worker_processes_with_micro_batches(artifacts):
    whole, staged, _ = artifacts
    reference = compiler.runtime.load(whole)
    cores = sorted(os.sched_getaffinity(0))
    cores = [cores[0], cores[-1]]
    batch = feeds(6)
    with ProcessPipeline(staged, workers=2, cores=cores, timeout=60) as pipeline:
        processes = list(pipeline._processes)
        assert all(p.is_alive() for p in processes)
        outputs = pipeline.run_many(batch)
        for inputs, out in zip(batch, outputs, strict=True):
            np.testing.assert_allclose(out["y"], reference(inputs)["y"], rtol=1e-6)
        # A batch of 3 micro-batches along axis 0, split and reassembled.
        big = {"x": np.concatenate([f["x"] for f in batch[:3]])}
        together = pipeline.run_batch(big)["y"]
        np.testing.assert_allclose(together, np.concatenate([o["y"] for o in outputs[:3]]))
    assert not any(p.is_alive() for p in processes)  # torn down


def test_worker_failure_is_reported_and_stops_the_pipeline(artifacts):
    _, staged, _ = artifacts
    with ProcessPipeline(staged, workers=3, timeout=60) as pipeline:
        processes = list(pipeline._processes)
        with pytest.raises(ArtifactError, match="a stage worker failed"):
            pipeline.run_many([{"x": np.zeros((4, 31), np.float32)}])  # wrong shape
    assert not any(p.is_alive() for p in processes)


# ------------------------------------------------------------------------- tensor parallel
@pytest.fixture(scope="module")
def sharded(tmp_path_factory, exported):
    """The example GPT-2 (2 layers: attention, MLP; LM head) built whole and 2-way tensor
    parallel."""
    root = tmp_path_factory.mktemp("shards")
    onnx_path = exported("gpt2")
    build(onnx_path, root / "whole", passes="cleanup", latency_runs=0)
    passes = "cleanup,partition(mode=tensor,shards=2)"
    result = build(onnx_path, root / "tp", passes=passes, latency_runs=0)
    return root / "whole", root / "tp", result


def token_feeds(count: int):
    rng = np.random.default_rng(2)
    return [{"input_ids": rng.integers(0, 1024, (1, 32)).astype(np.int64)} for _ in range(count)]


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_sharded_artifact_layout(sharded):
    _, _, result = sharded
    layout = result.manifest["tensor_parallel"]
    assert result.manifest["library"] is None and layout["shards"] == 2
    assert [g["kind"] for g in layout["groups"]] == ["all-reduce"] * 4 + ["all-gather"]
    segments = layout["segments"]
    assert [s["group"] for s in segments] == [0, 1, 2, 3, 4, None]
    assert [[p["path"] for p in s["shards"]] for s in segments[:2]] == [
        ["shards/0/0", "shards/0/1"],
        ["shards/1/0", "shards/1/1"],
    ]
    assert {f"shards/{j}/{k}/model.so" for j in range(6) for k in range(2)} <= set(
        result.manifest["files"]
    )
    # After the attention, each shard sends the other its partial sum of c_proj.
    (sent,) = segments[0]["shards"][1]["exchange"]
    assert sent.endswith("__tp1") and sent in segments[1]["shards"][0]["inputs"]
    assert result.report["verification"]["passed"]  # in-process, against onnxruntime
    assert result.report["partition"]["mode"] == "tensor"


def test_sharded_in_process_matches_the_whole_model(sharded):
    whole, tp, _ = sharded
    model = compiler.runtime.load(tp)
    assert isinstance(model, ShardedModel)
    reference = compiler.runtime.load(whole)
    for inputs in token_feeds(2):
        assert relative_error(model(inputs)["logits"], reference(inputs)["logits"]) <= 1e-5


def test_shards_run_on_two_worker_processes(sharded):
    whole, tp, _ = sharded
    reference = compiler.runtime.load(whole)
    cores = sorted(os.sched_getaffinity(0))
    feeds = token_feeds(4)
    with ShardWorkers(tp, cores=[cores[0], cores[-1]], timeout=60) as workers:
        processes = list(workers._processes)
        assert len({p.pid for p in processes}) == 2 and all(p.is_alive() for p in processes)
        outputs = workers.run_many(feeds)
        for inputs, out in zip(feeds, outputs, strict=True):
            assert relative_error(out["logits"], reference(inputs)["logits"]) <= 1e-5
        # Both workers ran their libraries (each its half of every matmul) for every feed.
        assert len(workers.timings) == 4
        assert all(w["compute_s"] > 0 for feed in workers.timings for w in feed)
        # A failing run is reported, and the workers stay usable.
        with pytest.raises(ArtifactError, match="a shard worker failed: shard 0, segment 0"):
            workers.run_many([{"input_ids": np.zeros((1, 15), np.int64)}])
        again = workers(feeds[0])["logits"]
        np.testing.assert_array_equal(again, outputs[0]["logits"])
    assert not any(p.is_alive() for p in processes)  # torn down
