"""tools/zoo.py on one dynamic-length decoder and one encoder (pipeline O1).

The full zoo (every architecture × O1/int8/int4, about 20 minutes here) runs by hand:
``python tools/zoo.py --json zoo.json``; ``test_the_full_zoo_passes`` runs it under ``-m slow``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import compiler.runtime
from backends.onnxruntime.reference import ReferenceSession
from compiler.artifact import ONNX_FILE
from compiler.errors import InputError
from compiler.numerics import max_error
from tests.helpers import REPO

pytestmark = pytest.mark.tvm

ZOO = REPO / "tools" / "zoo.py"


def _zoo(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ZOO), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    result = _zoo(
        "--models", "gpt2,bert", "--recipes", "O1", "--lengths", "5,12",
        "--json", str(root / "zoo.json"), "--out", str(root / "work"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return root, json.loads((root / "zoo.json").read_text()), result.stdout


def test_the_json_records_each_cell(small_zoo):
    _, summary, stdout = small_zoo
    assert summary["summary"] == {"cells": 2, "passed": 2, "failed": 0}
    assert summary["recipes"] == {"O1": "O1"}
    cells = {r["model"]: r for r in summary["results"]}
    assert set(cells) == {"gpt2", "bert"}
    for cell in cells.values():
        assert cell["status"] == "pass" and cell["stage"] is None
        assert 0 <= cell["error"] <= summary["tolerance"]
        assert cell["build_seconds"] > 0
    assert cells["bert"]["dynamic"] is False and "lengths" not in cells["bert"]
    gpt2 = cells["gpt2"]
    assert gpt2["dynamic"] is True
    assert gpt2["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": [1, "seq"]}]
    assert [c["length"] for c in gpt2["lengths"]] == [5, 12]
    for check in gpt2["lengths"]:
        assert check["passed"] and check["shapes"] == {"logits": [1, check["length"], 256]}
    assert "gpt2" in stdout and "PASS" in stdout and "2/2 passed" in stdout


@pytest.mark.parametrize("length", [3, 17])
def test_the_dynamic_artifact_runs_at_other_lengths(small_zoo, length):
    root, _, _ = small_zoo
    artifact = root / "work" / "gpt2" / "out-O1"
    model = compiler.runtime.load(artifact)
    ids = np.random.default_rng(length).integers(0, 256, size=(1, length)).astype(np.int64)
    ours = model({"input_ids": ids})
    expected = ReferenceSession(artifact / ONNX_FILE).run({"input_ids": ids})
    assert ours["logits"].shape == (1, length, 256)
    assert max_error(ours, expected)["logits"] < 1e-4
    with pytest.raises(InputError, match="rank 2"):
        model({"input_ids": ids[0]})


def test_unknown_models_are_refused():
    result = _zoo("--models", "gpt5")
    assert result.returncode == 2 and "unknown model or recipe 'gpt5'" in result.stderr


@pytest.mark.slow
def test_the_full_zoo_passes(tmp_path):
    result = _zoo("--json", str(tmp_path / "zoo.json"), timeout=3600)
    summary = json.loads((tmp_path / "zoo.json").read_text())
    failed = [
        f"{r['model']}/{r['recipe']}: {r['reason']}" for r in summary["results"] if r["reason"]
    ]
    assert result.returncode == 0 and not failed, failed
