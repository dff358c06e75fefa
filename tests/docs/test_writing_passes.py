"""docs/writing-passes.md: its code is the plugin's files, and the plugin installs and runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import onnx
import pytest

from tests.helpers import REPO, assert_same_outputs, install_plugin, model_from_text, run_cli

TUTORIAL = REPO / "docs" / "writing-passes.md"
PLUGIN = REPO / "docs" / "tutorial_plugin"
_BLOCK = re.compile(r"\*\*File `([^`]+)`\*\*\n\n```\w+\n(.*?)```", re.DOTALL)

MODEL = """
m (float[2,8] x, float[2,8] d) => (float[2,8] y) <float[8] w = {1,2,3,4,5,6,7,8}> {
  eight = Constant<value = float {8.0}>()
  a = Div(x, eight)
  three = Constant<value = float {3.0}>()
  b = Div(a, three)
  c = Div(b, w)
  y = Div(c, d)
}
"""


@pytest.fixture
def tutorial_passes(monkeypatch):
    """The plugin's package, imported from the source folder."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    import tutorial_passes

    return tutorial_passes


def _sources() -> set[str]:
    files = [*PLUGIN.glob("*.toml"), *PLUGIN.glob("*.py"), *PLUGIN.glob("tutorial_passes/*.py")]
    return {str(p.relative_to(REPO)) for p in files}


def test_the_tutorial_shows_every_file_of_the_plugin_as_it_is():
    blocks = _BLOCK.findall(TUTORIAL.read_text("utf-8"))
    assert {path for path, _ in blocks} == _sources()
    for path, text in blocks:
        assert text == (REPO / path).read_text("utf-8"), f"{path} differs from the tutorial's copy"


def test_the_readme_links_the_tutorial():
    assert "(docs/writing-passes.md)" in (REPO / "README.md").read_text("utf-8")


def test_div_to_mul_rewrites_constant_divisors_and_says_why_not(tutorial_passes):
    model = model_from_text(MODEL)
    before = model.clone()
    result = tutorial_passes.DivToMulPass()(model)
    assert result.modified
    ops = [
        (n.op_type, n.inputs[1].name if n.op_type in ("Div", "Mul") else "") for n in model.graph
    ]
    assert [op for op, _ in ops if op in ("Div", "Mul")] == ["Mul", "Mul", "Mul", "Div"]
    assert ops[-1] == ("Div", "d")  # by a graph input: kept
    assert_same_outputs(before, model, tolerance=1e-6)
    record = json.loads(model.metadata_props["tutorial.div-to-mul"])
    assert record["rewritten"] == 3
    assert list(record["kept"].values()) == ["the divisor is not a constant"]

    exact = model_from_text(MODEL)
    tutorial_passes.DivToMulPass(exact_only=True)(exact)
    assert [n.op_type for n in exact.graph if n.op_type in ("Div", "Mul")] == [
        "Mul",  # by 8: 1/8 is exact
        "Div",  # by 3
        "Div",  # by w = 1..8, not all powers of two
        "Div",
    ]
    assert_same_outputs(before, exact, tolerance=0.0)  # exact reciprocals change no bit
    kept = json.loads(exact.metadata_props["tutorial.div-to-mul"])["kept"]
    assert sorted(kept.values()) == [
        "exact_only, and 1/c is not exact (c is not a power of two)",
        "exact_only, and 1/c is not exact (c is not a power of two)",
        "the divisor is not a constant",
    ]


def test_div_to_mul_refuses_integers_and_zeros(tutorial_passes):
    model = model_from_text(
        """
        m (int64[4] i, float[4] x) => (int64[4] q, float[4] y) {
          two = Constant<value = int64 {2}>()
          q = Div(i, two)
          zero = Constant<value = float {0.0}>()
          y = Div(x, zero)
        }
        """
    )
    assert not tutorial_passes.DivToMulPass()(model).modified
    kept = json.loads(model.metadata_props["tutorial.div-to-mul"])["kept"]
    assert sorted(kept.values()) == [
        "1/c is not finite (c holds a zero or a subnormal)",
        "the divisor is INT64, not a float",
    ]


def test_strip_metadata_keeps_what_the_report_reads(tutorial_passes):
    model = model_from_text(MODEL)
    node = next(iter(model.graph))
    node.metadata_props.update(
        {"pkg.torch.onnx.stack_trace": 'File "/home/me/x.py"', "namespace": "m", "other": "1"}
    )
    node.doc_string = "made by me"
    model.metadata_props["compiler.fusion"] = "{}"
    assert tutorial_passes.StripMetadataPass()(model).modified
    assert dict(node.metadata_props) == {"other": "1"} and node.doc_string is None
    assert dict(model.metadata_props) == {"compiler.fusion": "{}"}
    assert not tutorial_passes.StripMetadataPass()(model).modified  # nothing left to strip


@pytest.mark.tvm
def test_the_plugin_installs_lists_and_runs_in_a_recipe(tmp_path):
    """As the tutorial says: pip install, `passes`, then `build --recipe tutorial.toml`."""
    source = tmp_path / "tutorial_plugin"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    env = install_plugin(source, site)
    result = run_cli("passes", env=env)
    assert result.returncode == 0, result.stderr
    for name in ("strip-metadata", "div-to-mul"):
        assert name in result.stdout
    assert "plugin compiler-tutorial-passes" in result.stdout
    result = run_cli("passes", "div-to-mul", env=env)
    assert "Replaces divisions by float constants" in result.stdout
    assert "exact_only: bool = False" in result.stdout

    explained = subprocess.run(
        [sys.executable, str(source / "explain.py")],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert explained.returncode == 0, explained.stderr
    assert "reason: the divisor is not a constant" in explained.stdout
    # The output the tutorial shows is what the script prints.
    shown = TUTORIAL.read_text("utf-8").split("$ PYTHONPATH=docs/tutorial_plugin python ")[1]
    shown_lines = shown.split("```")[0].splitlines()[1:]
    assert len(shown_lines) > 5
    printed = explained.stdout.splitlines()
    for line in shown_lines:
        assert line == "..." or line in printed, line

    path = _export_torch_model(tmp_path / "scaled.onnx")
    divs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Div"]
    assert len(divs) == 2 and divs[0].metadata_props  # the exporter's stack traces
    out = tmp_path / "out"
    recipe = str(source / "tutorial.toml")
    result = run_cli(
        "build", str(path), "--recipe", recipe, "--check-numerics", "-o", str(out), env=env
    )
    assert result.returncode == 0, result.stderr
    optimized = onnx.load(str(out / "model.onnx"))
    ops = [n.op_type for n in optimized.graph.node]
    assert "Div" not in ops and ops.count("Mul") == 2
    keys = {p.key for n in optimized.graph.node for p in n.metadata_props}
    assert not any(k.startswith("pkg.torch.") or k == "namespace" for k in keys), keys
    props = {p.key: p.value for p in optimized.metadata_props}
    assert json.loads(props["tutorial.div-to-mul"]) == {"rewritten": 2, "kept": {}}
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["passes"]] == ["strip-metadata", "div-to-mul", "cleanup"]
    numeric = {p["name"]: max(p["numeric_error"].values()) for p in report["passes"]}
    assert numeric["strip-metadata"] == 0.0 and numeric["div-to-mul"] <= 1e-6
    assert report["verification"]["passed"]  # the artifact against the *input* model
    assert report["verification"]["max_error"] <= 1e-5

    # A wrong option type in the recipe names the line, before anything is built.
    bad = tmp_path / "bad.toml"
    bad.write_text((source / "tutorial.toml").read_text().replace("= false", '= "no"'))
    result = run_cli("build", str(path), "--recipe", str(bad), "-o", str(tmp_path / "o"), env=env)
    assert result.returncode == 2
    assert (
        f"{bad}:9: option 'exact_only' of pass 'div-to-mul' expects true or false, "
        "got the string 'no'"
    ) in result.stderr


def _export_torch_model(path):
    """A linear layer, a softmax with a temperature of 8, and a division by 3: two Divs."""
    import onnx_ir as ir
    import torch

    from compiler.frontends.torch_module import load_torch

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(16, 16)

        def forward(self, x):
            return torch.softmax(self.linear(x) / 8.0, dim=-1) / 3.0

    torch.manual_seed(0)
    model = load_torch(Scaled().eval(), (torch.randn(2, 16),), input_names=["x"])
    ir.save(model, path)
    return path
