"""The command line, run as a user runs it: ``python -m compiler ...`` in a subprocess."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from backends.onnxruntime.reference import run_reference
from compiler.numerics import normalized_error
from tests.helpers import REPO, install_plugin, run_cli

pytestmark = pytest.mark.tvm


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result.stderr
    assert lines[-1].startswith("error:"), result.stderr
    return lines[-1]


def test_build_run_and_inspect(tiny_onnx, tmp_path):
    out = tmp_path / "out"
    result = run_cli("build", str(tiny_onnx), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "verified against onnxruntime" in result.stdout
    assert "cleanup" in result.stdout
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    result = run_cli(
        "run", str(out), "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")
    )
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "y.npz") as y:
        got = y["y"]
    assert normalized_error(got, run_reference(tiny_onnx, {"x": x})["y"]) <= 1e-5
    result = run_cli("inspect", str(out))
    assert result.returncode == 0, result.stderr
    assert "MatMul" in result.stdout and "float32" in result.stdout
    assert "estimated compute: 0.000 GFLOP" in result.stdout
    result = run_cli("inspect", str(tiny_onnx))
    assert "Identity" in result.stdout
    assert "the fuse pass has not run" in result.stdout


def test_bench_prints_a_ratio(tiny_artifact, tmp_path):
    result = run_cli(
        "bench",
        str(tiny_artifact),
        "--runs",
        "5",
        "--warmup",
        "1",
        "--json",
        str(tmp_path / "b.json"),
    )
    assert result.returncode == 0, result.stderr
    assert "× onnxruntime" in result.stdout and "compiler" in result.stdout
    import json

    data = json.loads((tmp_path / "b.json").read_text())
    assert data["ratios_to_onnxruntime"]["onnxruntime"] == 1.0
    assert data["ratios_to_onnxruntime"]["compiler"] > 0


def test_passes_lists_and_describes(tmp_path):
    result = run_cli("passes")
    assert result.returncode == 0, result.stderr
    for name in ("cleanup", "dce", "fold-constants", "cse", "eliminate-identity", "infer-shapes"):
        assert name in result.stdout
    result = run_cli("passes", "fold-constants")
    assert "input_size_limit: int = 8192" in result.stdout


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "missing.onnx", "missing.onnx: no such file"),
        (lambda d: _write(d / "garbage.onnx", b"\x07\xff not a model" * 50), "garbage.onnx: not"),
        (lambda d: _write(d / "empty.onnx", b""), "empty.onnx: the file is empty"),
    ],
)
def test_bad_models_give_one_clear_line(tmp_path, make, expected):
    path = make(tmp_path)
    result = run_cli("build", str(path), "-o", str(tmp_path / "out"))
    assert result.returncode != 0
    assert expected in _one_error_line(result)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def _write(path, data):
    path.write_bytes(data)
    return path


def test_truncated_model(tiny_onnx, tmp_path):
    data = tiny_onnx.read_bytes()
    path = _write(tmp_path / "cut.onnx", data[: len(data) // 3])
    result = run_cli("build", str(path))
    assert result.returncode != 0
    assert "cut.onnx" in _one_error_line(result)


def test_unsupported_op_names_file_node_and_op(tmp_path):
    proto = onnx.parser.parse_model(
        """
        <ir_version: 10, opset_import: ["" : 21]>
        g (float[4,3] s, int64[4] t) => (float loss) {
          loss = NegativeLogLikelihoodLoss <reduction = "mean"> (s, t)
        }
        """
    )
    proto.graph.node[0].name = "nll"
    onnx.save(proto, str(tmp_path / "loss.onnx"))
    result = run_cli("build", str(tmp_path / "loss.onnx"), "-o", str(tmp_path / "out"))
    assert result.returncode != 0
    line = _one_error_line(result)
    assert "loss.onnx" in line and "'nll'" in line and "NegativeLogLikelihoodLoss" in line


def test_unsafe_external_data_is_refused(tmp_path):
    from tests.compiler.frontends.test_onnx_file import _save_with_external_data, _set_location

    folder = tmp_path / "m"
    folder.mkdir()
    path = _save_with_external_data(folder)
    shutil.copy(folder / "model.onnx.data", tmp_path / "secret.data")
    _set_location(path, "../secret.data")
    result = run_cli("build", str(path), "-o", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "outside the model's folder" in _one_error_line(result)


def test_tampered_artifact_is_refused(tiny_artifact, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact, copy)
    (copy / "model.onnx").write_bytes(b"tampered")
    result = run_cli("run", str(copy))
    assert result.returncode != 0
    assert "model.onnx" in _one_error_line(result)


def test_bad_pipeline_and_verbose_traceback(tiny_onnx, tmp_path):
    result = run_cli(
        "build", str(tiny_onnx), "--passes", "cleanup,nosuch", "-o", str(tmp_path / "o")
    )
    assert result.returncode == 2
    assert "unknown pass 'nosuch'" in _one_error_line(result)
    result = run_cli(
        "--verbose", "build", str(tiny_onnx), "--passes", "nosuch", "-o", str(tmp_path / "o")
    )
    assert "Traceback" in result.stderr


def test_input_errors_on_run(tiny_artifact, tmp_path):
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 8), np.float64))
    result = run_cli("run", str(tiny_artifact), "--inputs", str(tmp_path / "wrong.npz"))
    assert result.returncode != 0
    assert "input 'x' must be float32" in _one_error_line(result)


def test_plugin_from_a_separate_package(tiny_onnx, tmp_path):
    """A pass package installed with pip shows up in `passes` and runs in a text pipeline."""
    site = tmp_path / "site"
    env = install_plugin(REPO / "tests" / "plugins" / "demo_plugin", site)
    result = run_cli("passes", env=env)
    assert result.returncode == 0, result.stderr
    assert "tag-nodes" in result.stdout and "plugin compiler-demo-passes" in result.stdout
    out = tmp_path / "out"
    result = run_cli(
        "build", str(tiny_onnx), "-o", str(out), "--passes", "cleanup,tag-nodes(tag=hello)", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "tag-nodes" in result.stdout
    optimized = onnx.load(str(out / "model.onnx"))
    tags = [p.value for n in optimized.graph.node for p in n.metadata_props if p.key == "demo.tag"]
    assert tags == ["hello", "hello"]


def test_build_llm_and_generate(tmp_path):
    out = tmp_path / "lm"
    result = run_cli("build", "--llm", "-o", str(out), "--prefill-len", "8", "--max-context", "24")
    assert result.returncode == 0, result.stderr
    assert (out / "llm.json").is_file()
    result = run_cli("generate", str(out), "--prompt-ids", "3,1,4,1,5", "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    tokens = result.stdout.strip().split(",")
    assert len(tokens) == 6 and all(t.isdigit() for t in tokens)
    result = run_cli("generate", str(out), "--prompt-ids", "1,x")
    assert result.returncode != 0
    assert "--prompt-ids expects comma-separated integers" in _one_error_line(result)


def test_tune_then_build_with_the_database(tmp_path):
    """`tune` writes a database (tiny budget); `build --tuning-db` reports kernels from it."""
    import onnx_ir as ir

    from tests.backends.tvm.test_tuning import TEXT
    from tests.helpers import model_from_text

    path = tmp_path / "ew.onnx"
    ir.save(model_from_text(TEXT), path)
    db = tmp_path / "db"
    result = run_cli("tune", str(path), "--db", str(db), "--budget", "5m", "--trials-per-task", "2")
    assert result.returncode == 0, result.stderr
    assert "1 tuned now" in result.stdout
    result = run_cli("build", str(path), "-o", str(tmp_path / "out"), "--tuning-db", str(db))
    assert result.returncode == 0, result.stderr
    assert "1 kernels from it" in result.stdout
    result = run_cli("tune", str(path), "--db", str(db), "--budget", "soon")
    assert result.returncode != 0
    assert "--budget expects a duration" in _one_error_line(result)


def test_build_quantized_with_calibration_and_an_error_budget(tmp_path):
    """The bundled example, int4 by GPTQ from an .npz calibration file, under a budget."""
    ids = np.random.default_rng(0).integers(0, 1024, (4, 1, 32))
    np.savez(tmp_path / "calib.npz", input_ids=ids)
    out = tmp_path / "int4"
    result = run_cli(
        "build",
        "-o",
        str(out),
        "--passes",
        "cleanup,quantize(bits=4,group=32,method=gptq)",
        "--calibration",
        str(tmp_path / "calib.npz"),
        "--max-error",
        "10",
    )
    assert result.returncode == 0, result.stderr
    assert "accuracy: quantize error" in result.stdout and "kept" in result.stdout
    assert "4 calibration samples" in result.stdout
    assert "quantized 11 layers; largest output error" in result.stdout
    rolled = run_cli(
        "build",
        "-o",
        str(tmp_path / "tight"),
        "--passes",
        "cleanup,quantize(bits=4)",
        "--max-error",
        "1e-6",
    )
    assert rolled.returncode == 0, rolled.stderr
    assert "ROLLED BACK" in rolled.stdout


def test_gptq_without_calibration_is_a_clear_error(tmp_path):
    result = run_cli("build", "-o", str(tmp_path / "x"), "--passes", "quantize(method=gptq)")
    assert result.returncode != 0
    assert "--calibration" in _one_error_line(result)
