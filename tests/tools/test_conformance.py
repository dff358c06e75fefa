"""tools/conformance.py: the ONNX node tests through our build path, on a handful of cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "conformance.py"
sys.path.insert(0, str(TOOL.parent))

import conformance  # noqa: E402

# A case that passes, one out of scope (random outputs), one whose result differs (the expected
# inverse DFT holds ~2e-7 of float32 FFT noise where the exact answer is 0, above the suite's
# atol of 1e-7), and one whose Reshape shape is an input (passes once folded into a constant).
CASES = "^test_(abs|bernoulli|dft_inverse|reshape_reduced_dims)$"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("conformance") / "report.json"
    result = subprocess.run(
        [sys.executable, str(TOOL), "--filter", CASES, "--jobs", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "passed: 2 (66.7%)" in result.stdout  # the summary line of the table
    return json.loads(out.read_text())


@pytest.mark.tvm
def test_report_classifies_each_case(report):
    cases = {c["name"]: c for c in report["cases"]}
    assert set(cases) == {
        "test_abs",
        "test_bernoulli",
        "test_dft_inverse",
        "test_reshape_reduced_dims",
    }
    assert cases["test_abs"]["status"] == "passed" and cases["test_abs"]["op"] == "Abs"
    assert cases["test_reshape_reduced_dims"]["status"] == "passed"
    assert cases["test_bernoulli"]["status"] == "out_of_scope"
    assert cases["test_bernoulli"]["message"].startswith("random:")
    dft = cases["test_dft_inverse"]
    assert (dft["status"], dft["stage"]) == ("failed", "result")
    assert "differs" in dft["message"] and "\n" not in dft["message"]
    assert not any(c["uncaught"] for c in report["cases"])


@pytest.mark.tvm
def test_report_summarizes_by_op_and_stage(report):
    summary = report["summary"]
    assert (summary["total"], summary["in_scope"], summary["passed"]) == (4, 3, 2)
    assert summary["pass_rate"] == pytest.approx(2 / 3)
    assert summary["failures_by_stage"] == {"result": 1}
    row = summary["ops"]["DFT"]
    assert (row["passed"], row["in_scope"]) == (0, 1)
    assert row["first"]["stage"] == "result"
    assert summary["ops"]["Bernoulli"]["out_of_scope"] == 1
    assert report["tolerances"]["rtol"] == 1e-3 and report["tolerances"]["atol"] == 1e-7
    assert report["shape_inputs"] == "constant"


def test_compare_follows_onnx_runner_checks():
    expected = [("y", np.array([1.0, 2.0], dtype=np.float32))]
    ok = {"y": np.array([1.0005, 2.0], dtype=np.float32)}  # within rtol 1e-3
    assert conformance.compare(expected, ok, 1e-3, 1e-7) is None
    far = {"y": np.array([1.01, 2.0], dtype=np.float32)}
    assert "differs" in conformance.compare(expected, far, 1e-3, 1e-7)
    wrong_dtype = {"y": np.array([1.0, 2.0], dtype=np.float64)}
    assert "dtype float64" in conformance.compare(expected, wrong_dtype, 1e-3, 1e-7)
    wrong_shape = {"y": np.array([[1.0, 2.0]], dtype=np.float32)}
    assert "shape [1, 2]" in conformance.compare(expected, wrong_shape, 1e-3, 1e-7)
    nan = [("y", np.array([np.nan], dtype=np.float32))]
    assert conformance.compare(nan, {"y": np.array([np.nan], dtype=np.float32)}, 1e-3, 1e-7) is None


def test_every_scope_rule_has_a_reason_and_a_known_key(tmp_path):
    rules = conformance.load_scope_rules()
    assert rules and all(rule.reason for rule in rules)
    bad = tmp_path / "scope.toml"
    bad.write_text('[[rule]]\nops = ["Abs"]\n')
    with pytest.raises(ValueError, match="needs a reason"):
        conformance.load_scope_rules(bad)
