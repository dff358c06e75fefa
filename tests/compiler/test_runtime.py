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
    """Run-time errors inside the compiled code (here: a MatMul whose symbolic inner dims K and J
    turn out different, caught by the GEMM kernel) surface as one documented error naming the
    artifact, not as a raw TVM exception (found by tools/conformance.py)."""
    from compiler.builder import build
    from compiler.errors import BackendError
    from tests.helpers import model_from_text

    model = model_from_text("g (float[2,K] x, float[J,3] w) => (float[2,3] y) { y = MatMul(x, w) }")
    build(model, tmp_path / "mm", verify=False, latency_runs=0)
    feeds = {"x": np.ones((2, 4), np.float32), "w": np.ones((5, 3), np.float32)}
    with pytest.raises(BackendError, match=r"mm: the compiled model failed to run: .*mismatch"):
        load(tmp_path / "mm")(feeds)


def test_indices_out_of_range_are_refused_before_the_compiled_gather_reads_them(tmp_path):
    """The compiled Gather does not check bounds (TVM's fast ``take`` reads past the table):
    an out-of-range token id is an InputError naming the input, the value and the node."""
    from compiler.builder import build
    from compiler.errors import InputError
    from tests.helpers import model_from_text

    model = model_from_text(
        """
        g (int64[1,3] ids) => (float[1,3,4] y) <float[10,4] table = {
            0,1,2,3, 4,5,6,7, 8,9,10,11, 12,13,14,15, 16,17,18,19,
            20,21,22,23, 24,25,26,27, 28,29,30,31, 32,33,34,35, 36,37,38,39}> {
          y = Gather <axis = 0> (table, ids)
        }
        """
    )
    build(model, tmp_path / "emb", verify=False, latency_runs=0)
    embed = load(tmp_path / "emb")
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    ids = np.array([[0, 9, -10]])
    np.testing.assert_array_equal(embed({"ids": ids})["y"], table[ids])
    for bad, value in ((np.array([[0, 10, 1]]), 10), (np.array([[-11, 0, 1]]), -11)):
        with pytest.raises(InputError, match=rf"'ids' has {value} at index .*Gather node"):
            embed({"ids": bad})


def test_host_zeros_and_host_copy_are_aligned():
    from compiler.runtime import ALIGNMENT, host_copy, host_zeros

    for shape, dtype in (((12, 1, 3, 5), np.float32), ((7,), np.int64), ((), np.float16)):
        array = host_zeros(shape, dtype)
        assert array.shape == shape and array.dtype == dtype
        assert array.ctypes.data % ALIGNMENT == 0 and array.flags.writeable
        assert not array.any()
    source = np.arange(2 * 8 + 1, dtype=np.float32)[1:].reshape(2, 8)  # 4 bytes past alignment
    copy = host_copy(source)
    assert copy.ctypes.data % ALIGNMENT == 0 and copy.flags.c_contiguous
    np.testing.assert_array_equal(copy, source)


def test_aligned_inputs_are_read_in_place_and_others_copied(tiny_artifact):
    from compiler.runtime import host_zeros

    model = load(tiny_artifact)
    aligned = host_zeros((2, 8), np.float32)
    aligned[...] = 1.5
    assert model._library_input(aligned).data_ptr() == aligned.ctypes.data
    unaligned = np.zeros(2 * 8 + 1, np.float32)[1:].reshape(2, 8)  # 4 bytes past an alignment
    unaligned[...] = 1.5
    assert model._library_input(unaligned).data_ptr() != unaligned.ctypes.data
    readonly = aligned.copy()
    readonly.flags.writeable = False
    assert model._library_input(readonly).data_ptr() != readonly.ctypes.data
    np.testing.assert_array_equal(model({"x": unaligned})["y"], model({"x": aligned})["y"])
    np.testing.assert_array_equal(aligned, 1.5)  # inputs are never written


def test_results_are_the_callers_own(tmp_path):
    """A caller may modify any result, and a later run leaves earlier results alone, also where
    the library returns an input (Identity), a view of one (Reshape) or its own constant (a
    weight output, which zero-copy results had let the caller overwrite for every later run)."""
    from compiler.builder import build
    from compiler.runtime import host_zeros
    from tests.helpers import model_from_text

    model = model_from_text(
        """
        g (float[4,16] x) => (float[4,16] same, float[64] flat, float[4,16] doubled,
                              float[4,16] w_out) <float[4,16] w = {{{}}}> {{
          same = Identity(x)
          shape = Constant <value = int64[1] {{64}}> ()
          flat = Reshape(x, shape)
          doubled = Add(x, x)
          w_out = Identity(w)
        }}
        """.format(", ".join(str(float(v)) for v in range(64)))
    )
    build(model, tmp_path / "alias", verify=False, latency_runs=0)
    run = load(tmp_path / "alias")
    x = host_zeros((4, 16), np.float32)
    x[...] = 2.0
    first = run({"x": x})
    for name, value in first.items():
        assert value.flags.writeable, name
        value[...] = -7.0
    np.testing.assert_array_equal(x, 2.0)
    second = run({"x": x})
    np.testing.assert_array_equal(second["same"], 2.0)
    np.testing.assert_array_equal(second["flat"], 2.0)
    np.testing.assert_array_equal(second["doubled"], 4.0)
    np.testing.assert_array_equal(second["w_out"].ravel(), np.arange(64, dtype=np.float32))
    third = run({"x": x * 3})
    np.testing.assert_array_equal(second["doubled"], 4.0)  # not overwritten by a later run
    np.testing.assert_array_equal(third["doubled"], 12.0)
