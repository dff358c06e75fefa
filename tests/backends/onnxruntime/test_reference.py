from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from backends.onnxruntime import ReferenceSession, run_reference, save_model
from compiler.errors import BackendError
from tests.helpers import model_from_text


def test_runs_an_ir_model_and_a_path(tiny_onnx, tmp_path):
    model = ir.load(tiny_onnx)
    x = np.ones((2, 8), np.float32)
    from_ir = run_reference(model, {"x": x})
    from_path = run_reference(tiny_onnx, {"x": x})
    np.testing.assert_array_equal(from_ir["y"], from_path["y"])


def test_save_model_writes_external_data_above_the_threshold(tiny_onnx, tmp_path):
    model = ir.load(tiny_onnx)
    small = save_model(model, tmp_path / "a.onnx")
    assert small == [tmp_path / "a.onnx"]
    big = save_model(model, tmp_path / "b.onnx", external_threshold=16)
    assert big == [tmp_path / "b.onnx", tmp_path / "b.onnx.data"]
    x = np.ones((2, 8), np.float32)
    np.testing.assert_array_equal(
        run_reference(tmp_path / "b.onnx", {"x": x})["y"], run_reference(model, {"x": x})["y"]
    )


def test_weights_read_from_another_models_data_file_are_copied(tmp_path):
    """A small model loaded with external data, saved again: its weights go to the new model's
    own data file, never as a reference to the source's (the source may be moved or deleted:
    artifacts built from such models had a model.onnx onnxruntime could not open)."""
    source = tmp_path / "src" / "m.onnx"
    source.parent.mkdir()
    values = ", ".join(str(float(v)) for v in range(32 * 32))  # above onnx_ir's inline size
    model = model_from_text(
        f"g (float[1,32] x) => (float[1,32] y) <float[32,32] w = {{{values}}}> "
        "{ y = MatMul(x, w) }"
    )
    ir.save(model, source, external_data="m.onnx.data")
    loaded = ir.load(source)
    assert isinstance(loaded.graph.initializers["w"].const_value, ir.ExternalTensor)
    (tmp_path / "out").mkdir()
    written = save_model(loaded, tmp_path / "out" / "copy.onnx")
    assert written == [tmp_path / "out" / "copy.onnx", tmp_path / "out" / "copy.onnx.data"]
    for file in source.parent.iterdir():
        file.unlink()
    x = np.ones((1, 32), np.float32)
    weight = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    np.testing.assert_array_equal(run_reference(written[0], {"x": x})["y"], x @ weight)


def test_errors_are_backend_errors():
    model = model_from_text("g (float[2] x) => (float[2] y) { y = Relu(x) }")
    session = ReferenceSession(model)
    with pytest.raises(BackendError, match="onnxruntime failed to run"):
        session.run({"x": np.ones((3, 3), np.float32)})
