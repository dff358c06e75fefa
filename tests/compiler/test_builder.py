"""``compiler.builder`` (``compiler.build``): the spine from a model to a verified artifact."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
import torch

from compiler.artifact import MANIFEST_FILE, read_manifest
from compiler.builder import build
from compiler.errors import BackendError, PassFailedError
from tests.helpers import model_from_text

pytestmark = pytest.mark.tvm


def test_build_writes_a_complete_verified_artifact(tiny_artifact):
    manifest = read_manifest(tiny_artifact)
    assert set(manifest["files"]) == {
        "model.so",
        "weights.safetensors",
        "model.onnx",
        "report.json",
        "report.html",
    }
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": [2, 8]}]
    assert manifest["outputs"] == [{"name": "y", "dtype": "float32", "shape": [2, 4]}]
    assert manifest["versions"]["apache-tvm"] == "0.27.0.post1"
    assert [w["shape"] for w in manifest["weights"]["order"]] == [[8, 16]]
    report = json.loads((tiny_artifact / "report.json").read_text())
    assert report["verification"]["passed"] and report["verification"]["max_error"] <= 1e-5
    names = [p["name"] for p in report["passes"]]
    assert names == ["cleanup"]
    # The Identity is gone after cleanup.
    assert report["input_model"]["ops"]["Identity"] == 1
    assert "Identity" not in report["output_model"]["ops"]


def test_build_never_modifies_the_input(tiny_onnx, tmp_path):
    before = tiny_onnx.read_bytes()
    model = ir.load(tiny_onnx)
    build(model, tmp_path / "a")  # an in-memory model: passes work on a clone
    assert len(list(model.graph)) == 6
    build(tiny_onnx, tmp_path / "b", pipeline="O1")
    assert tiny_onnx.read_bytes() == before


def test_builds_of_the_same_input_are_byte_identical(tiny_onnx, tmp_path):
    build(tiny_onnx, tmp_path / "a")
    build(tiny_onnx, tmp_path / "b")
    a, b = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    for name in ("model.so", "weights.safetensors", "model.onnx"):
        assert a["files"][name] == b["files"][name], name


def test_build_from_a_torch_module(tmp_path):
    from compiler.runtime import load

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    x = torch.randn(4, 16)
    result = build(
        module, tmp_path / "seq", example_inputs=(x,), input_names=["x"], output_names=["y"]
    )
    assert result.report["verification"]["passed"]
    got = load(tmp_path / "seq")({"x": x.numpy()})["y"]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-4, atol=1e-5)


def test_pass_failure_leaves_no_output(tiny_onnx, tmp_path):
    class Broken(ir.passes.InPlacePass):
        name = "broken"

        def call(self, model):
            raise RuntimeError("bug in a pass")

    from compiler.pass_registry import PassRegistry
    from passes import BUILTIN_PASSES

    registry = PassRegistry()
    for cls in [*BUILTIN_PASSES, Broken]:
        registry.register(cls)
    with pytest.raises(PassFailedError, match=r"pass 'broken' failed \(after cleanup\)"):
        build(tiny_onnx, tmp_path / "out", passes="cleanup,broken", registry=registry)
    assert list(tmp_path.iterdir()) == []


def test_numeric_check_and_dumps(tiny_onnx, tmp_path):
    result = build(
        tiny_onnx,
        tmp_path / "out",
        passes="eliminate-identity,dce",
        check_numerics=True,
        dump_dir=tmp_path / "dumps",
    )
    assert [p["numeric_error"] for p in result.report["passes"]] == [{"y": 0.0}, {"y": 0.0}]
    assert sorted(p.name for p in (tmp_path / "dumps").iterdir()) == [
        "00-input.onnx",
        "01-eliminate-identity.onnx",
        "02-dce.onnx",
    ]


def test_unsupported_op_fails_the_build_naming_the_node(tmp_path):
    model = model_from_text(
        """
        g (float[4,3] scores, int64[4] labels) => (float loss) {
          loss = NegativeLogLikelihoodLoss <reduction = "mean"> (scores, labels)
        }
        """
    )
    model.graph.node(0).name = "the_loss"
    path = tmp_path / "loss.onnx"
    ir.save(model, path)
    with pytest.raises(
        BackendError, match=r"loss\.onnx: node 'the_loss' uses op NegativeLogLikelihoodLoss"
    ):
        build(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cuda_build_generates_code_and_skips_verification(tiny_onnx, tmp_path):
    result = build(tiny_onnx, tmp_path / "cuda", target="cuda")
    assert result.manifest["target"]["kind"] == "cuda"
    assert result.report["verification"]["enabled"] is False
    assert (tmp_path / "cuda" / MANIFEST_FILE).is_file()


def test_build_a_model_with_external_data(tmp_path):
    from compiler.runtime import load
    from tests.compiler.frontends.test_onnx_file import _save_with_external_data

    folder = tmp_path / "m"
    folder.mkdir()
    path = _save_with_external_data(folder)
    result = build(path, tmp_path / "out")
    assert result.report["verification"]["passed"]
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    np.testing.assert_allclose(load(tmp_path / "out")({"x": x})["y"], x, rtol=1e-6)


def test_top_level_api_stays_callable(tiny_onnx, tmp_path):
    """``compiler.build`` is the function, also after its module was imported."""
    import compiler
    import compiler.builder
    import compiler.runtime

    assert callable(compiler.build) and callable(compiler.load)
    compiler.build(tiny_onnx, tmp_path / "a")
    assert callable(compiler.build)
    assert compiler.runtime.load(tmp_path / "a").output_names == ["y"]
