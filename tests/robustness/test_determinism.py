"""Two builds of the same input with the same options give the same bytes.

Decision on the report: ``report.json`` keeps its measurements (each pass's time, the step
timings and the latency check: what the report is for), so it differs between builds by those
fields only, and ``report.html`` (which shows them) and the manifest's hashes of those two files
differ with it. The test compares:

* every other file byte for byte: ``model.so``, ``weights.safetensors``, ``model.onnx``;
* ``report.json`` with the measured fields removed (``MEASURED``);
* ``report.html`` rendered again from those measurement-free reports (no dates, random ids or
  paths of its own);
* ``manifest.json`` with the two report files' hash entries removed (the payload: signature,
  target, versions, pipeline, weight order, and the hashes of the files above).

Findings (TVM 0.27, g++ 12): ``model.so`` is identical between builds in separate processes with
different hash seeds and output folders — no temporary path or timestamp is embedded, and the
GNU build id is a hash of the contents — so nothing had to change in the link step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.tvm

MEASURED = ("timings_seconds", "latency")  # top-level report fields that are measurements
REPORT_FILES = ("report.json", "report.html")


def _without_measurements(report: dict) -> dict:
    """The report with every measured number (times, latencies, ratios) set to 0."""

    def zero(value):
        if isinstance(value, dict):
            return {k: zero(v) for k, v in value.items()}
        if isinstance(value, list):
            return [zero(v) for v in value]
        return 0 if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    report = {k: zero(v) if k in MEASURED else v for k, v in report.items()}
    report["passes"] = [{**p, "seconds": 0} for p in report["passes"]]
    return report


def _build(model: Path, out: Path, hash_seed: str) -> Path:
    # Separate processes with different hash seeds: set and dict-of-id orders change between them.
    result = run_cli("build", str(model), "-o", str(out), env={"PYTHONHASHSEED": hash_seed})
    assert result.returncode == 0, result.stderr
    return out


def _assert_same_artifact(a: Path, b: Path) -> None:
    from compiler.report_html import render_report

    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name in (*REPORT_FILES, "manifest.json"):
            continue
        digest_a = hashlib.sha256((a / name).read_bytes()).hexdigest()
        digest_b = hashlib.sha256((b / name).read_bytes()).hexdigest()
        assert digest_a == digest_b, f"{name} differs between two builds"
    reports = [json.loads((d / "report.json").read_text()) for d in (a, b)]
    assert reports[0]["timings_seconds"] != {}, "the report should still hold its timings"
    stripped = [_without_measurements(r) for r in reports]
    assert stripped[0] == stripped[1]
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (a, b)]
    files = [{k: v["bytes"] for k, v in m["files"].items()} for m in manifests]
    # The page lists the files' sizes, report.json's included (which differs by timing digits).
    html = [render_report(r, files[0]) for r in stripped]
    assert html[0] == html[1]
    for manifest in manifests:
        for name in REPORT_FILES:
            manifest["files"].pop(name)
    assert manifests[0] == manifests[1]


def test_two_builds_give_identical_bytes(tiny_onnx, tmp_path):
    before = tiny_onnx.read_bytes()
    a = _build(tiny_onnx, tmp_path / "a.artifact", "1")
    b = _build(tiny_onnx, tmp_path / "b" / "other-name", "2")
    _assert_same_artifact(a, b)
    assert tiny_onnx.read_bytes() == before


@pytest.mark.slow
def test_two_builds_of_the_bundled_example_give_identical_bytes(tmp_path):
    from compiler.examples import export_onnx

    model = export_onnx("gpt2", tmp_path / "gpt2.onnx", layers=1, hidden=32, heads=2, vocab=64)
    _assert_same_artifact(_build(model, tmp_path / "a", "1"), _build(model, tmp_path / "b", "2"))
