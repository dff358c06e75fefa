"""``bisect``: names the first drifting pass and node, and writes a reproducer that drifts the
same way under that pass; and ``inspect --dump-after`` writes a pipeline stage.

The wrong pass is a real plugin (``tests/plugins/broken_plugin``): in-process tests register its
class in a registry of their own; the command-line tests pip-install the package, as a user does.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from backends.onnxruntime.reference import run_reference
from compiler.bisect import bisect, describe
from compiler.numerics import max_error
from compiler.pass_manager import PassManager
from compiler.pass_registry import PassRegistry, default_registry
from tests.helpers import REPO, install_plugin, run_cli, seeded_inputs
from tests.passes.quantize.models import linear_model

PLUGIN = REPO / "tests" / "plugins" / "broken_plugin"
TOLERANCE = 1e-5  # the default tolerance of a pass that declares none


def _perturb_weight_class():
    spec = importlib.util.spec_from_file_location(
        "broken_passes_under_test", PLUGIN / "broken_passes" / "__init__.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PerturbWeightPass


@pytest.fixture(scope="module")
def registry() -> PassRegistry:
    """The built-in passes plus perturb-weight."""
    registry = PassRegistry()
    for info in default_registry():
        registry.register(info.cls, origin=info.origin)
    registry.register(_perturb_weight_class(), origin="tests")
    return registry


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """Three MatMuls with ReLUs between (nodes linear0, relu0, linear1, relu1, linear2)."""
    path = tmp_path_factory.mktemp("bisect") / "linear.onnx"
    ir.save(linear_model(4, 16, 16, layers=3), path)
    return path


def _drift(before: ir.Model, after: ir.Model) -> float:
    inputs = seeded_inputs(before, seed=7)  # not bisect's inputs
    return max(max_error(run_reference(after, inputs), run_reference(before, inputs)).values())


def test_names_the_pass_and_the_node_and_the_reproducer_drifts(model_path, registry, tmp_path):
    repro_path = tmp_path / "repro.onnx"
    result = bisect(
        model_path, "cleanup,perturb-weight(node=linear1),cse", output=repro_path, registry=registry
    )
    assert result.pass_name == "perturb-weight(node=linear1)" and result.pass_index == 1
    assert result.output_errors["y"] > 0.01
    # linear0 and relu0 still agree: the drift starts at the second MatMul.
    assert (result.node.name, result.node.op_type) == ("linear1", "MatMul")
    assert result.node.error > TOLERANCE
    assert result.reproducer == repro_path and result.reproducer_error > TOLERANCE
    lines = describe(result)
    assert "'perturb-weight(node=linear1)'" in lines[0] and "'linear1' (MatMul)" in lines[1]

    # Minimal: the MatMul alone, its activation as the input, its weight inside.
    proto = onnx.load(str(repro_path))
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in proto.graph.node] == ["MatMul"]
    assert [i.name for i in proto.graph.input] == ["relu0"]
    assert [t.name for t in proto.graph.initializer] == ["w1"]

    # The same pass on the reproducer drifts beyond the tolerance; a lossless pipeline does not.
    repro = ir.load(repro_path)
    perturbed = registry.create("perturb-weight", node="linear1")(repro.clone()).model
    assert _drift(repro, perturbed) > TOLERANCE
    cleaned = PassManager([registry.create("cleanup"), registry.create("cse")]).run(repro.clone())
    assert _drift(repro, cleaned.model) <= TOLERANCE
    # And bisect on the reproducer finds the same pass and node again.
    again = bisect(repro_path, "perturb-weight(node=linear1)", registry=registry)
    assert again.pass_index == 0 and again.node.name == "linear1"


def test_no_drift_says_so(model_path, registry):
    result = bisect(model_path, "cleanup,cse", registry=registry)
    assert result.pass_name is None and result.node is None
    assert describe(result)[0].startswith("no pass drifts: all 2 passes stay within")


def test_an_explicit_tolerance_applies_to_every_pass(model_path, registry):
    """int4 quantize drifts beyond the default 1e-5 from the first MatMul on; with a tolerance
    above its error, nothing drifts."""
    text = "cleanup,quantize(bits=4,group=16)"
    strict = bisect(model_path, text, registry=registry)
    assert strict.pass_name == "quantize(bits=4,group=16)" and strict.tolerance == TOLERANCE
    assert strict.node.name == "linear0"
    assert bisect(model_path, text, tolerance=1.0, registry=registry).pass_name is None


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("broken-site")
    return install_plugin(PLUGIN, site)


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), result.stderr
    return lines[-1]


def test_cli_bisect_with_a_plugin_pass(model_path, plugin_env, tmp_path):
    repro = tmp_path / "r.onnx"
    result = run_cli(
        "bisect",
        str(model_path),
        "--passes",
        "cleanup,perturb-weight,cse",
        "-o",
        str(repro),
        env=plugin_env,
    )
    assert result.returncode == 0, result.stderr
    assert "first drifting pass: 'perturb-weight' (pass 2 of 3)" in result.stdout
    assert "first drifting node: 'linear0' (MatMul)" in result.stdout
    assert f"reproducer: {repro}" in result.stdout
    # The reproducer fails the same way under the pass, and not under a lossless pipeline.
    again = run_cli(  # without -o: writes r.repro.onnx into the working folder
        "bisect", str(repro), "--passes", "perturb-weight", cwd=tmp_path, env=plugin_env
    )
    assert (tmp_path / "r.repro.onnx").is_file()
    assert "first drifting node: 'linear0' (MatMul)" in again.stdout, again.stderr
    clean = run_cli("bisect", str(repro), "--passes", "cleanup,cse", cwd=tmp_path, env=plugin_env)
    assert clean.returncode == 0 and "no pass drifts" in clean.stdout, clean.stderr
    unknown = run_cli("bisect", str(model_path), "--passes", "cleanup,nosuch")
    assert unknown.returncode == 2
    assert "unknown pass 'nosuch'" in _one_error_line(unknown)


def test_inspect_dump_after(model_path, tmp_path):
    stage = tmp_path / "stage.onnx"
    result = run_cli(
        "inspect",
        str(model_path),
        "--passes",
        "cleanup,quantize(bits=4,group=16),fuse",
        "--dump-after",
        "quantize",
        "-o",
        str(stage),
    )
    assert result.returncode == 0, result.stderr
    assert "after pass 2 of 3 (quantize(bits=4,group=16))" in result.stdout
    assert "com.microsoft::MatMulNBits" in result.stdout
    assert "estimated compute: 0.000 GFLOP" in result.stdout
    assert "the fuse pass has not run" in result.stdout  # stopped before fuse
    written = onnx.load(str(stage))
    assert [n.op_type for n in written.graph.node].count("MatMulNBits") == 3
    x = np.random.default_rng(0).standard_normal((1, 4, 16)).astype(np.float32)
    assert run_reference(stage, {"x": x})["y"].shape == (1, 4, 16)

    whole = run_cli("inspect", str(model_path), "--passes", "cleanup,fuse")
    assert whole.returncode == 0, whole.stderr
    assert "after pass 2 of 2 (fuse)" in whole.stdout and "fusion coverage:" in whole.stdout

    missing = run_cli(
        "inspect", str(model_path), "--passes", "cleanup", "--dump-after", "cse", "-o", str(stage)
    )
    assert missing.returncode != 0
    assert "--dump-after 'cse': no such pass in --passes (cleanup)" in _one_error_line(missing)


def test_describe_says_when_the_reproducer_does_not_drift():
    """A pass whose change depends on the rest of the graph may leave the node alone intact."""
    from compiler.bisect import BisectResult, DriftingNode

    result = BisectResult(
        ["cleanup", "p"],
        pass_name="p",
        pass_index=1,
        tolerance=1e-5,
        output_errors={"y": 0.5},
        node=DriftingNode(3, "mm", "MatMul", "", "v", 0.2),
        reproducer_nodes=1,
        reproducer_error=0.0,
    )
    assert "'p' leaves it within tolerance" in describe(result)[2]
