"""The loader and the CLI under mutated models: a short campaign of tools/fuzz.py.

The full campaign (issue 7: 10,000 cases) runs by hand:
``python tools/fuzz.py --cases 10000 --seed 0 --timeout-per-case 30 --json fuzz.json``.
Here 200 cases (the bundled example exported small, and the hand-made seeds) must end in success
or a documented error (compiler.errors), never another exception, a crash or a hang, and the
harness itself must see a crash and a hang as failures.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

FUZZ = REPO / "tools" / "fuzz.py"


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("compiler_fuzz_tool", FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_short_campaign_finds_only_documented_errors(tmp_path):
    out = tmp_path / "fuzz.json"
    result = subprocess.run(
        [
            sys.executable,
            str(FUZZ),
            "--cases",
            "200",
            "--seed",
            "7",
            "--timeout-per-case",
            "30",
            "--cli-every",
            "100",  # two `python -m compiler inspect` runs in a subprocess
            "--build-every",
            "0",
            "--seed-cache",
            str(tmp_path),
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = json.loads(out.read_text())
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary["failures"] == 0, summary["failure_groups"]
    assert summary["cases"] == 200
    assert "gpt2" in summary["seed_models"] and "external" in summary["seed_models"]
    # The campaign reaches both sides: models that load, and each kind of refusal.
    outcomes = summary["outcomes"]
    assert outcomes.get("ok", 0) > 0 and outcomes.get("ModelLoadError", 0) > 0, outcomes
    assert outcomes.get("UnsafeModelError", 0) > 0, outcomes
    assert sum(outcomes.values()) == 200
    assert sum(summary["cli_samples"].values()) == 2


def test_cases_are_reproducible(tmp_path):
    fuzz = _fuzz_module()
    seeds = fuzz.load_seeds(tmp_path, example=False)
    a = fuzz.make_case(42, 3, seeds, tmp_path / "a")
    b = fuzz.make_case(42, 3, seeds, tmp_path / "a")
    assert a == b
    assert fuzz.make_case(43, 3, seeds, tmp_path / "a") != a


@pytest.mark.parametrize(("kind", "expected"), [("crash", "crash"), ("hang", "hang")])
def test_the_harness_sees_crashes_and_hangs(tmp_path, kind, expected):
    fuzz = _fuzz_module()
    worker = fuzz.Worker(tmp_path / "worker.log")
    try:
        reply = worker.run(tmp_path / "none.onnx", tmp_path, timeout=3, self_test=kind)
        assert reply["outcome"] == "unexpected" and reply["type"] == expected, reply
        # The worker is started again for the next case.
        (tmp_path / "case").mkdir()
        reply = worker.run(tmp_path / "case" / "missing.onnx", tmp_path / "case", timeout=30)
        assert reply["outcome"] == "ModelLoadError", reply
        assert worker.starts == 2
    finally:
        worker.stop()
