"""The side-by-side benchmark: real timings of ours, onnxruntime and torch in one process."""

from __future__ import annotations

import pytest
import torch

from compiler.bench import bench_artifact
from compiler.builder import build

pytestmark = pytest.mark.tvm


def test_bench_times_ours_onnxruntime_and_torch(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    x = torch.randn(4, 32)
    build(module, tmp_path / "a", example_inputs=(x,), input_names=["x"], output_names=["y"])
    result = bench_artifact(
        tmp_path / "a", runs=5, warmup=1, against=("onnxruntime", "torch"), torch_module=module
    )
    assert set(result.medians_ms) == {"compiler", "onnxruntime", "torch"}
    assert all(len(v) == 5 and min(v) > 0 for v in result.samples_ms.values())
    assert result.ratios["onnxruntime"] == 1.0
    assert result.to_json()["threads"] == 2


def test_bench_times_extra_runtimes_on_the_same_inputs(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Linear(16, 4)
    build(module, tmp_path / "a", example_inputs=(torch.randn(2, 16),), input_names=["x"])
    seen = []
    result = bench_artifact(
        tmp_path / "a", runs=3, warmup=1, against=(), extra={"other": seen.append}, gap_s=0
    )
    assert set(result.medians_ms) == {"compiler", "other"}
    assert len(seen) == 4  # one warm-up, three timed
    assert set(seen[0]) == {"x"} and seen[0]["x"].shape == (2, 16)
