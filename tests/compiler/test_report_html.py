"""``report.html``: written into every artifact, rendered by headless Chromium without errors.

The page checker itself (:mod:`tests.browser`) is tested first on pages that do go wrong: a test
that cannot see a console error would pass on any page.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx_ir as ir
import pytest

from compiler.artifact import read_manifest
from compiler.builder import build
from compiler.report_html import render_report
from tests.browser import open_page
from tests.helpers import run_cli
from tests.passes.quantize.models import linear_model

pytestmark = pytest.mark.tvm

PASSES = "cleanup,quantize(bits=4,group=32)"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<script>throw new Error('x marks the spot')</script>", "x marks the spot"),
        ("<script>console.error('logged on purpose')</script>", "logged on purpose"),
        ('<img src="no-such-image.png">', "ERR_FILE_NOT_FOUND"),
    ],
)
def test_the_page_checker_sees_errors(tmp_path, body, expected):
    page = tmp_path / "bad.html"
    page.write_text(f"<!DOCTYPE html><html><body><p>hello</p>{body}</body></html>")
    result = open_page(page, evaluate={"paragraphs": "document.querySelectorAll('p').length"})
    assert any(expected in e for e in result.errors), result.errors
    assert result.values == {"paragraphs": 1}


def test_the_page_checker_passes_a_clean_page(tmp_path):
    page = tmp_path / "good.html"
    page.write_text("<!DOCTYPE html><html><body><p>hello</p><script>1 + 1</script></body></html>")
    assert open_page(page).errors == []


@dataclasses.dataclass
class Built:
    output_dir: Path
    report: dict
    stdout: str


@pytest.fixture(scope="module")
def int4_artifact(tmp_path_factory) -> Built:
    """An int4 build of three 64×64 MatMuls, from the command line."""
    folder = tmp_path_factory.mktemp("report-html")
    path = folder / "linear.onnx"
    ir.save(linear_model(4, 64, 64, layers=3), path)
    result = run_cli("build", str(path), "-o", str(folder / "int4"), "--passes", PASSES)
    assert result.returncode == 0, result.stderr
    report = json.loads((folder / "int4" / "report.json").read_text())
    return Built(folder / "int4", report, result.stdout)


def test_report_json_has_the_per_pass_table(int4_artifact):
    report = int4_artifact.report
    cleanup, quantize = report["passes"]
    assert cleanup["name"] == "cleanup" and cleanup["error"] is None
    assert quantize["name"] == "quantize" and quantize["modified"]
    # int4 codes packed two per byte plus float32 scales: the float weights are gone.
    assert quantize["after"]["parameter_bytes"]["uint8"] == 3 * 64 * 64 // 2
    assert quantize["after"]["flops"] == 3 * 2 * 4 * 64 * 64
    assert quantize["seconds"] > 0
    # Measured without a budget: the only lossy pass's error is the whole model's.
    assert 0 < quantize["error"] == report["accuracy"]["error_vs_input_model"] < 1
    assert quantize["rolled_back"] is False
    latency = report["latency"]
    assert latency["measured"] and latency["runs"] == 5
    assert latency["medians_ms"]["compiler"] > 0 and latency["medians_ms"]["onnxruntime"] > 0
    assert report["fusion"] is None  # the fuse pass did not run
    assert "report.html" in read_manifest(int4_artifact.output_dir)["files"]
    assert "latency (median of 5 runs):" in int4_artifact.stdout
    assert f"report: {int4_artifact.output_dir / 'report.html'}" in int4_artifact.stdout


def test_latency_can_be_skipped(tiny_onnx, tmp_path):
    report = build(tiny_onnx, tmp_path / "a", latency_runs=0, verify=False).report
    assert report["latency"] == {"measured": False, "reason": "skipped (latency_runs=0)"}
    assert "latency" not in report["timings_seconds"]


def test_report_html_renders_without_errors(int4_artifact, tmp_path):
    page = int4_artifact.output_dir / "report.html"
    screenshot = tmp_path / "report.png"
    result = open_page(
        page,
        screenshot=screenshot,
        evaluate={
            "pass_rows": "[...document.querySelectorAll('#passes tbody tr')]"
            ".map(r => r.cells[0].textContent)",
            "headers": "[...document.querySelectorAll('#passes th')].map(h => h.textContent)",
            "quantize_row": "document.querySelectorAll('#passes tbody tr')[2].textContent",
            "plots": "[...document.querySelectorAll('#plots figure')].map(f => f.id)",
            # Drawn, not only present: every bar of the byte and layer plots has a width.
            "byte_bars": "[...document.querySelectorAll('#plot-bytes rect.bar')]"
            ".filter(r => r.getBBox().width > 0).length",
            "layer_bars": "[...document.querySelectorAll('#plot-layers rect.bar')]"
            ".filter(r => r.getBBox().width > 0).length",
            "plot_height": "document.querySelector('#plot-bytes svg').getBoundingClientRect()"
            ".height",
            "layers": "document.querySelectorAll('#layers tbody tr').length",
            "summary": "document.querySelector('#summary').textContent",
            "scripts": "document.scripts.length",
        },
    )
    where = f"(screenshot: {screenshot})"
    assert result.errors == [], f"{result.errors} {where}"
    values = result.values
    assert values["pass_rows"] == ["(input)", "cleanup", "quantize"], where
    for column in ("nodes", "parameters", "bytes by dtype", "FLOPs", "time", "error vs before"):
        assert column in values["headers"], where
    assert "uint8" in values["quantize_row"] and "0.2" in values["quantize_row"], where
    assert values["plots"] == [
        "plot-bytes",
        "plot-flops",
        "plot-params",
        "plot-time",
        "plot-layers",
    ], where
    # Input and cleanup: float only; after quantize: float scales and uint8 codes.
    assert values["byte_bars"] == 4, where
    assert values["layer_bars"] == 3 and values["layers"] == 3, where
    assert values["plot_height"] > 50, where
    assert "onnxruntime" in values["summary"] and "48.0 KiB → 7.5 KiB" in values["summary"], where
    assert values["scripts"] == 0, where
    assert screenshot.stat().st_size > 20_000, where


def test_model_strings_are_escaped(int4_artifact, tmp_path):
    """Node and pass names are shown as text, never parsed as markup."""
    evil = "<img src=x onerror=alert(1)>&amp;"
    report = json.loads(json.dumps(int4_artifact.report))
    report["accuracy"]["layers"][0]["node"] = evil
    report["passes"][0]["name"] = evil
    report["fusion"] = {"fused": {evil: 1}, "unfused": {f"MatMul {evil}": 2}}
    html = render_report(report, {"model.so": 1})
    assert evil not in html
    page = tmp_path / "evil.html"
    page.write_text(html)
    result = open_page(
        page,
        evaluate={
            "images": "document.images.length",
            "shown": "document.querySelector('#passes tbody tr:nth-child(2) td').textContent",
            "fusion": "document.querySelector('#fusion').textContent",
        },
    )
    assert result.errors == []
    assert result.values["images"] == 0
    assert result.values["shown"] == evil
    assert evil in result.values["fusion"]


def test_rolled_back_passes_are_marked(int4_artifact):
    report = json.loads(json.dumps(int4_artifact.report))
    assert "ROLLED BACK" not in render_report(report)
    report["passes"][1]["rolled_back"] = True
    html = render_report(report)
    assert html.count("ROLLED BACK") == 2  # the pass table and the accuracy table
