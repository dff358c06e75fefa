"""Loading ONNX files: memory-mapped external data, and every kind of bad file refused clearly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from compiler.errors import ModelLoadError, UnsafeModelError
from compiler.frontends import load
from tests.helpers import model_from_text


def _save_with_external_data(folder: Path) -> Path:
    x = ir.val("x", ir.DataType.FLOAT, (2, 64))
    weight = ir.Value(
        name="w",
        type=ir.TensorType(ir.DataType.FLOAT),
        shape=ir.Shape((64, 64)),
        const_value=ir.tensor(np.eye(64, dtype=np.float32), name="w"),
    )
    node = ir.node("MatMul", [x, weight], outputs=[ir.val("y", ir.DataType.FLOAT, (2, 64))])
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=[weight], opset_imports={"": 21})
    path = folder / "model.onnx"
    ir.save(ir.Model(graph, ir_version=10), path, external_data="model.onnx.data")
    return path


def _set_location(path: Path, location: str) -> None:
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(proto, str(path))


def test_loads_external_data_memory_mapped(tmp_path):
    path = _save_with_external_data(tmp_path)
    before = path.read_bytes(), (tmp_path / "model.onnx.data").read_bytes()
    model = load(path)
    tensor = model.graph.initializers["w"].const_value
    assert isinstance(tensor, ir.ExternalTensor)
    np.testing.assert_array_equal(tensor.numpy(), np.eye(64, dtype=np.float32))
    assert (path.read_bytes(), (tmp_path / "model.onnx.data").read_bytes()) == before


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match=r"nope\.onnx: no such file"):
        load(tmp_path / "nope.onnx")


def test_a_folder_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="not a regular file"):
        load(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load(tmp_path / "empty.onnx")


def test_garbage_file(tmp_path):
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\xff garbage, not protobuf \x17" * 40)
    with pytest.raises(ModelLoadError, match=r"garbage\.onnx: not"):
        load(tmp_path / "garbage.onnx")


def test_truncated_file(tmp_path, tiny_onnx):
    data = tiny_onnx.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"cut\.onnx"):
        load(tmp_path / "cut.onnx")


def test_checker_errors_name_the_file(tmp_path):
    proto = ir.to_proto(model_from_text("g (float[2] x) => (float[2] y) { y = Relu(x) }"))
    proto.graph.node[0].op_type = "NoSuchOp"
    onnx.save(proto, str(tmp_path / "bad_op.onnx"))
    with pytest.raises(ModelLoadError, match=r"bad_op\.onnx: the ONNX checker rejected"):
        load(tmp_path / "bad_op.onnx")


@pytest.mark.parametrize("location", ["../outside.data", "sub/../../outside.data"])
def test_refuses_external_data_outside_the_folder(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    path = _save_with_external_data(folder)
    (tmp_path / "outside.data").write_bytes((folder / "model.onnx.data").read_bytes())
    _set_location(path, location)
    with pytest.raises(UnsafeModelError, match="outside the model's folder"):
        load(path)


def test_refuses_absolute_external_data(tmp_path):
    path = _save_with_external_data(tmp_path)
    _set_location(path, str(tmp_path / "model.onnx.data"))
    with pytest.raises(UnsafeModelError, match="absolute path"):
        load(path)


def test_refuses_external_data_through_a_symlink(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path = _save_with_external_data(folder)
    os.replace(folder / "model.onnx.data", tmp_path / "real.data")
    # A link inside the folder pointing at a file inside it would pass the containment check;
    # the link itself must be refused.
    (folder / "inner").mkdir()
    os.replace(tmp_path / "real.data", folder / "inner" / "real.data")
    os.symlink(folder / "inner", folder / "link")
    _set_location(path, "link/real.data")
    with pytest.raises(UnsafeModelError, match="symbolic link"):
        load(path)


def test_missing_external_data_file(tmp_path):
    path = _save_with_external_data(tmp_path)
    (tmp_path / "model.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(path)


def test_external_data_past_the_end_of_its_file(tmp_path):
    path = _save_with_external_data(tmp_path)
    with open(tmp_path / "model.onnx.data", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ModelLoadError, match="past the end"):
        load(path)


def test_unknown_source_type():
    with pytest.raises(ModelLoadError, match="cannot load a model from a int"):
        load(42)
