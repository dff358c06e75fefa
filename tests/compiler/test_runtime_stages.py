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
