"""``compiler.runtime``: load an artifact, run it, refuse tampered artifacts and bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from backends.onnxruntime.reference import run_reference
from compiler.errors import ArtifactError, InputError
from compiler.numerics import normalized_error
from compiler.runtime import load

pytestmark = pytest.mark.tvm


def test_outputs_match_onnxruntime(tiny_artifact, tiny_onnx):
    model = load(tiny_artifact)
    assert model.input_names == ["x"] and model.output_names == ["y"]
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    got = model({"x": x})
    assert list(got) == ["y"]
    assert normalized_error(got["y"], run_reference(tiny_onnx, {"x": x})["y"]) <= 1e-5
    np.testing.assert_array_equal(model(x=x)["y"], got["y"])


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing input 'x'"),
        ({"x": np.zeros((2, 8), np.float32), "z": np.zeros(1)}, "unknown input 'z'"),
        ({"x": np.zeros((2, 8), np.float64)}, "input 'x' must be float32, got float64"),
        ({"x": np.zeros((2, 9), np.float32)}, r"input 'x' must have shape \[2, 8\]"),
        ({"x": np.zeros((16,), np.float32)}, "input 'x' must have rank 2"),
    ],
)
def test_bad_inputs_are_refused(tiny_artifact, inputs, message):
    with pytest.raises(InputError, match=message):
        load(tiny_artifact)(inputs)


@pytest.fixture
def artifact_copy(tiny_artifact, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact, copy)
    return copy


def test_tampered_weights_are_refused(artifact_copy):
    path = artifact_copy / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"weights\.safetensors: sha256 differs"):
        load(artifact_copy)


def test_tampered_library_is_refused(artifact_copy):
    with open(artifact_copy / "model.so", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ArtifactError, match=r"model\.so: size"):
        load(artifact_copy)


def test_incomplete_artifact_is_refused(artifact_copy):
    (artifact_copy / "model.so").unlink()
    with pytest.raises(ArtifactError, match=r"incomplete artifact, model\.so is missing"):
        load(artifact_copy)


def test_newer_format_is_refused(artifact_copy):
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format version 99 is not supported"):
        load(artifact_copy)


def test_runtime_imports_no_compiler_code(tiny_artifact):
    """A deployment needs TVM's runtime only: no passes, frontends, backends or onnx.

    (TVM itself imports torch when it is installed, so torch is not on the list.)
    """
    script = f"""
import sys, numpy as np
import compiler.runtime
m = compiler.runtime.load({str(tiny_artifact)!r})
m({{"x": np.zeros((2, 8), np.float32)}})
banned = [n for n in sys.modules if n.split(".")[0] in ("passes", "backends", "onnx", "onnx_ir",
          "onnxruntime", "onnxscript", "transformers")
          or n in ("compiler.builder", "compiler.pass_manager", "compiler.frontends")]
print(sorted(banned))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_a_failure_inside_the_compiled_code_is_a_backend_error(tmp_path):
    """TVM's own run-time errors (here: TopK has no uint64 kernel) surface as one documented
    error naming the artifact, not as a raw TVM exception (found by tools/conformance.py)."""
    from compiler.builder import build
    from compiler.errors import BackendError
    from tests.helpers import model_from_text

    model = model_from_text(
        """
        g (uint64[3,4] x) => (uint64[3,2] v, int64[3,2] i) {
          k = Constant <value = int64[1] {2}> ()
          v, i = TopK(x, k)
        }
        """
    )
    build(model, tmp_path / "topk", verify=False, latency_runs=0)
    with pytest.raises(BackendError, match=r"topk: the compiled model failed to run: .*uint64"):
        load(tmp_path / "topk")({"x": np.arange(12, dtype=np.uint64).reshape(3, 4)})
