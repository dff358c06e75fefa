"""Recipes: TOML files -> validated passes and build settings; shipped recipes build the example."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compiler.builder import build, quantizes_activations
from compiler.cli import EXAMPLE, EXAMPLE_CONFIG
from compiler.errors import RecipeError
from compiler.frontends.onnx_file import load_onnx
from compiler.pipeline import build_passes, parse_pipeline
from compiler.recipes import load_recipe, parse_recipe, shipped_recipes
from tests.helpers import run_cli

SHIPPED = {
    "int4-llm-cpu": "cleanup,quantize(bits=4,group=128)",
    "int8-llm-cpu": "cleanup,quantize(bits=8,group=0)",
    "int8-encoder-cpu": "cleanup,quantize(bits=8,group=0,activations=dynamic,granularity=token)",
    "bf16-gpu": "cleanup,cast(dtype=bf16)",
}


@pytest.fixture(scope="module")
def bundled_example(tmp_path_factory):
    """What `python -m compiler build` builds with no model, as an .onnx file."""
    from compiler.examples import export_onnx

    path = tmp_path_factory.mktemp("bundled") / "gpt2.onnx"
    return export_onnx(EXAMPLE, path, **EXAMPLE_CONFIG)


def _error(text: str, tmp_path) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return str(info.value)


# ------------------------------------------------------------------------------------ parsing
def test_shipped_recipes_compile_to_the_pipelines_of_the_command_line():
    assert set(shipped_recipes()) >= set(SHIPPED)
    for name, text in SHIPPED.items():
        recipe = load_recipe(name)
        assert recipe.pipeline == text
        assert recipe.description  # the first comment line, listed by `recipes`
        # The same pass instances the equivalent --passes builds.
        ours, theirs = build_passes(recipe.pipeline), build_passes(text)
        assert [(type(p), vars(p)) for p in ours] == [(type(p), vars(p)) for p in theirs]
    assert load_recipe("bf16-gpu").target == "cuda"


def test_a_recipe_file_with_every_setting(tmp_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    path = folder / "mine.toml"
    path.write_text(
        """
# my recipe
target = "llvm"
max_error = 1          # an integer is a number
tolerance = 2e-3
tuning_db = "../db"
[calibration]
file = "data/calib.txt"
tokenizer = "smollm2"
[dims]
batch = 2
[[passes]]
name = "O1"
[[passes]]
name = "quantize"
bits = 8
include = 'h\\.0\\..*|lm_head'
symmetric = false
damp = 1
"""
    )
    recipe = load_recipe(path)
    assert recipe.name == "mine" and recipe.description == "my recipe"
    assert recipe.max_error == 1.0 and isinstance(recipe.max_error, float)
    assert recipe.calibration == folder / "data" / "calib.txt"  # against the recipe's folder
    assert recipe.tuning_db == tmp_path / "db"
    assert recipe.tokenizer == "smollm2" and recipe.dims == {"batch": 2}
    # A regex with '|' and '\' survives the pipeline text: it is quoted there.
    assert parse_pipeline(recipe.pipeline)[1].options["include"] == r"h\.0\..*|lm_head"
    quantize = build_passes(recipe.pipeline)[1]
    assert quantize.include == r"h\.0\..*|lm_head" and quantize.symmetric is False
    assert quantize.damp == 1.0
    kwargs = recipe.build_kwargs()
    assert kwargs["passes"] == recipe.pipeline and kwargs["dims"] == {"batch": 2}
    assert kwargs["calibration"] == recipe.calibration and "tokenizer" not in kwargs


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ('[[passes]]\nname = "cleanup"\n[[passes]]\nname = "quantise"\n', 4, "unknown pass "),
        ('[[passes]]\nname = "quantize"\ngroup = 32\nbits = "four"\n', 4, "expects an integer"),
        ('[[passes]]\nname = "quantize"\nbits = 3\n', 3, "must be one of 4 | 8, got 3"),
        ('[[passes]]\nname = "quantize"\nbitz = 4\n', 3, "unknown option 'bitz' in pass"),
        ('# ok\n[[passes]]\nname = "cleanup"\nmax_rounds = 2.5\n', 4, "expects an integer"),
        ('[[passes]]\nname = "cast"\ndtype = bf16\n', 3, "TOML syntax error"),
        ('target = "llvm"\nmax_eror = 0.5\n[[passes]]\nname = "cleanup"\n', 2, "unknown key"),
        ('max_error = -1\n[[passes]]\nname = "cleanup"\n', 1, "must be positive"),
        ('target = "llvm"\n', None, "names no passes"),
        ('[calibration]\ntokenizer = "minilm"\n[[passes]]\nname = "O1"\n', 1, "needs file"),
        ('[[passes]]\nname = "O2"\nsteps = 2\n', 3, "takes no options"),
        ("[[passes]]\nbits = 4\n", 1, "has no name"),
        ('[dims]\nseq = "32"\n[[passes]]\nname = "O1"\n', 2, "dimension 'seq' expects"),
    ],
)
def test_malformed_recipes_name_the_file_line_and_problem(tmp_path, text, line, expected):
    message = _error(text, tmp_path)
    where = f"{tmp_path / 'bad.toml'}:{line}: " if line else f"{tmp_path / 'bad.toml'}: "
    assert message.startswith(where), message
    assert expected in message, message


def test_error_messages_say_what_would_be_right(tmp_path):
    message = _error('[[passes]]\nname = "quantise"\n', tmp_path)
    assert "unknown pass 'quantise'; close names: quantize" in message
    message = _error('[[passes]]\nname = "quantize"\nbits = "four"\n', tmp_path)
    assert "option 'bits' of pass 'quantize' (4 | 8) expects an integer, got the string 'four'" in (
        message
    )
    message = _error('[[passes]]\nname = "quantize"\nbitz = 4\n', tmp_path)
    assert "did you mean 'bits'?" in message and "(known: bits, group," in message
    message = _error('target = "llvm"\nmax_error = = 1\n', tmp_path)
    assert ":2: TOML syntax error: Invalid value (column 13): max_error = = 1" in message
    message = _error('max_eror = 0.5\n[[passes]]\nname = "O1"\n', tmp_path)
    assert "did you mean 'max_error'?" in message


def test_inline_tables_report_the_line_of_their_key(tmp_path):
    message = _error(
        'target = "llvm"\npasses = [{name = "cleanup"}, {name = "nosuch"}]\n', tmp_path
    )
    assert ":2: unknown pass 'nosuch'" in message


def test_unknown_recipe_names_list_the_shipped_ones():
    with pytest.raises(RecipeError, match=r"did you mean 'int4-llm-cpu'.*shipped: bf16-gpu"):
        load_recipe("int4-llm")
    with pytest.raises(RecipeError, match="no such file"):
        load_recipe("nowhere/mine.toml")


def test_a_text_recipe_without_a_path_resolves_against_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = parse_recipe('[calibration]\nfile = "c.npz"\n[[passes]]\nname = "O0"\n')
    assert recipe.calibration == tmp_path / "c.npz" and recipe.pipeline == ""


# ------------------------------------------------------------------------------------ building
@pytest.mark.tvm
@pytest.mark.parametrize("name", list(SHIPPED))
def test_each_shipped_recipe_builds_the_bundled_example(bundled_example, tmp_path, name):
    """The bundled example (`python -m compiler build` with no model) under each recipe."""
    recipe = load_recipe(name)
    result = build(bundled_example, tmp_path / name, **recipe.build_kwargs())
    report = result.report
    assert report["pipeline"] == recipe.pipeline == result.manifest["pipeline"]
    assert [p["name"] for p in report["passes"]] == [p.name for p in recipe.passes]
    (record,) = report["accuracy"]["passes"]  # each shipped recipe has one lossy pass, budgeted
    assert record["budget"] == recipe.max_error and not record["rolled_back"]
    assert record["error"] <= recipe.max_error
    verification = report["verification"]
    if name == "bf16-gpu":
        # CUDA code is generated here, never run: there is no GPU to verify it on.
        assert result.manifest["target"]["kind"] == "cuda"
        assert verification["enabled"] is False and "no cuda device" in verification["reason"]
        assert {r["dtype"] for r in report["accuracy"]["cast"]} == {"bf16"}
        assert (tmp_path / name / "model.so").is_file()  # the CUDA code, compiled
        return
    assert result.manifest["target"]["kind"] == "llvm"
    assert verification["passed"]
    layers = report["accuracy"]["layers"]
    bits = recipe.passes[1].options["bits"]
    assert layers and {layer["bits"] for layer in layers} == {bits}
    optimized = load_onnx(tmp_path / name / "model.onnx")
    assert quantizes_activations(optimized) == (name == "int8-encoder-cpu")


@pytest.mark.tvm
def test_build_with_a_recipe_from_the_command_line(tmp_path):
    """`build --recipe FILE` on the bundled example: relative calibration, CLI overrides."""
    ids = np.random.default_rng(0).integers(0, 1024, (2, 1, 32))
    (tmp_path / "r").mkdir()
    np.savez(tmp_path / "r" / "calib.npz", input_ids=ids)
    recipe = tmp_path / "r" / "int8.toml"
    recipe.write_text(
        '# int8 with data\nmax_error = 0.25\n[calibration]\nfile = "calib.npz"\n'
        '[[passes]]\nname = "cleanup"\n[[passes]]\nname = "quantize"\nbits = 8\ngroup = 0\n'
    )
    out = tmp_path / "out"
    result = run_cli(
        "build", "--recipe", str(recipe), "--max-error", "0.5", "-o", str(out), cwd=tmp_path.parent
    )
    assert result.returncode == 0, result.stderr
    assert "cleanup,quantize(bits=8,group=0)" in result.stderr  # the recipe's pipeline, said
    assert "budget 0.5): kept" in result.stdout  # --max-error overrides the recipe's 0.25
    assert "2 calibration samples" in result.stdout  # calib.npz found beside the recipe
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pipeline"] == load_recipe(recipe).pipeline


def test_recipe_command_line_errors(tmp_path):
    result = run_cli("build", "--recipe", "int4-llm-cpu", "--passes", "cleanup")
    assert result.returncode != 0
    assert "give --recipe or --passes/--pipeline" in result.stderr.strip().splitlines()[-1]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[passes]]\nname = "quantize"\nbits = "four"\n')
    result = run_cli("build", "--recipe", str(bad), "-o", str(tmp_path / "o"))
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"error: {bad}:3: option 'bits' of pass 'quantize'"), line
    assert not (tmp_path / "o").exists()


def test_recipes_command_lists_and_shows_them():
    result = run_cli("recipes")
    assert result.returncode == 0, result.stderr
    for name, text in SHIPPED.items():
        assert name in result.stdout and text in result.stdout
    assert "int4 weights (round-to-nearest, groups of 128)" in result.stdout
    result = run_cli("recipes", "bf16-gpu")
    assert result.returncode == 0, result.stderr
    assert '[[passes]]\nname = "cast"\ndtype = "bf16"' in result.stdout
    assert "pipeline: cleanup,cast(dtype=bf16)" in result.stdout
