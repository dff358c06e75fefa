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


def test_errors_are_backend_errors():
    model = model_from_text("g (float[2] x) => (float[2] y) { y = Relu(x) }")
    session = ReferenceSession(model)
    with pytest.raises(BackendError, match="onnxruntime failed to run"):
        session.run({"x": np.ones((3, 3), np.float32)})
