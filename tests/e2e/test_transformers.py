"""Whole models from transformers configs (2 layers, hidden 256) through `build` and `run`.

Each is exported with torch.onnx (dynamo), built with the CLI, run with the CLI on real-looking
inputs (token ids across the vocabulary, a padded attention mask for BERT), and compared with
onnxruntime on the same file: normalized max error ≤ 1e-4 in fp32. The Python runtime must give
the same numbers as the CLI, and the input model's bytes must not change.
"""

from __future__ import annotations

import numpy as np
import pytest

from backends.onnxruntime.reference import run_reference
from compiler.numerics import normalized_error
from compiler.runtime import load
from tests.helpers import run_cli

pytestmark = pytest.mark.tvm

TOLERANCE = 1e-4


def _inputs(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 1024, size=(1, 32)).astype(np.int64)
    if name != "bert":
        return {"input_ids": ids}
    mask = np.ones((1, 32), np.int64)
    mask[:, 24:] = 0  # padding at the end
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("pipeline", ["O1", "O2"])
def test_build_and_run_match_onnxruntime(name, pipeline, exported, tmp_path):
    model_path = exported(name)
    files = sorted(model_path.parent.iterdir())
    before = {p: p.read_bytes() for p in files}
    out = tmp_path / "out"
    result = run_cli("build", str(model_path), "-o", str(out), "--pipeline", pipeline)
    assert result.returncode == 0, result.stderr
    inputs = _inputs(name)
    np.savez(tmp_path / "x.npz", **inputs)
    result = run_cli(
        "run", str(out), "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")
    )
    assert result.returncode == 0, result.stderr
    expected = run_reference(model_path, inputs)
    with np.load(tmp_path / "y.npz") as data:
        cli_outputs = {k: data[k] for k in data.files}
    assert set(cli_outputs) == set(expected)
    for key, value in expected.items():
        assert normalized_error(cli_outputs[key], value) <= TOLERANCE, key
    python_outputs = load(out)(inputs)
    for key, value in cli_outputs.items():
        np.testing.assert_array_equal(python_outputs[key], value)
    assert sorted(model_path.parent.iterdir()) == files
    assert {p: p.read_bytes() for p in files} == before
    if pipeline == "O2":
        inspected = run_cli("inspect", str(out))
        assert "fusion coverage: fused" in inspected.stdout
