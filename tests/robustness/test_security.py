"""Security: external data that escapes its folder, tampered artifacts, calibration pickles.

Complements tests/compiler/frontends/test_onnx_file.py (``..``, absolute, a symlinked folder
inside the model's folder, a missing file, a length past the end) and test_artifact.py /
test_runtime.py (a modified, truncated or missing file, a newer format).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler.artifact import read_manifest, write_manifest
from compiler.errors import ArtifactError, CompilerError, ModelLoadError, UnsafeModelError
from compiler.frontends import load
from tests.compiler.frontends.test_onnx_file import _save_with_external_data
from tests.helpers import run_cli

DATA = "model.onnx.data"
TENSOR_BYTES = 64 * 64 * 4  # the 64×64 float32 weight of _save_with_external_data


def _edit_entries(path: Path, **entries: str | None) -> None:
    """Sets (or, with None, removes) external-data entries of the model's one initializer."""
    proto = onnx.load(str(path), load_external_data=False)
    tensor = proto.graph.initializer[0]
    kept = [(e.key, e.value) for e in tensor.external_data if e.key not in entries]
    del tensor.external_data[:]
    for key, value in [*kept, *((k, v) for k, v in entries.items() if v is not None)]:
        tensor.external_data.add(key=key, value=value)
    onnx.save(proto, str(path))


@pytest.fixture
def model(tmp_path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    path = _save_with_external_data(folder)
    load(path)  # the unmodified model loads
    return path


def test_refuses_a_data_file_that_is_a_symlink_to_a_file_inside(model):
    # Even a link that points at the real data file inside the folder: links are never followed.
    os.symlink(DATA, model.parent / "link.data")
    _edit_entries(model, location="link.data")
    with pytest.raises(UnsafeModelError, match="symbolic link"):
        load(model)


def test_refuses_a_data_file_that_is_a_symlink_to_a_file_outside(model, tmp_path):
    shutil.copy(model.parent / DATA, tmp_path / "secret.data")
    os.symlink(tmp_path / "secret.data", model.parent / "link.data")
    _edit_entries(model, location="link.data")
    with pytest.raises(UnsafeModelError, match="symbolic link"):
        load(model)


def test_refuses_a_symlinked_parent_folder_pointing_outside(model, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(model.parent / DATA, tmp_path / "elsewhere" / DATA)
    os.symlink(tmp_path / "elsewhere", model.parent / "sub")
    _edit_entries(model, location=f"sub/{DATA}")
    with pytest.raises(UnsafeModelError, match="symbolic link"):
        load(model)


def test_a_symlink_loop_is_refused_not_crashed_on(model):
    os.symlink("loop", model.parent / "loop")
    for location in ("loop", "loop/x"):
        _edit_entries(model, location=location)
        with pytest.raises(UnsafeModelError, match="symbolic link"):
            load(model)


@pytest.mark.parametrize("location", [f"{DATA}\0.txt", "a\0b", "\0"])
def test_refuses_a_location_with_a_nul_byte(model, location):
    # A C reader stops at the NUL: "x.data\0.txt" is checked as one file and read as another.
    _edit_entries(model, location=location)
    with pytest.raises(UnsafeModelError, match="NUL"):
        load(model)


@pytest.mark.parametrize(
    "location", ["sub/../../" + DATA, "/etc/passwd", "//etc/passwd", "\\etc\\passwd", "../../x"]
)
def test_refuses_locations_outside_or_absolute(model, location):
    _edit_entries(model, location=location)
    with pytest.raises(UnsafeModelError):
        load(model)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("x" * 5000, "cannot be checked: File name too long"),
        ("d/" * 3000 + "x", "cannot be checked"),
        (".", "not a regular file"),
        ("", "no location"),
    ],
)
def test_bad_locations_are_load_errors(model, location, message):
    _edit_entries(model, location=location)
    with pytest.raises(ModelLoadError, match=message):
        load(model)


def test_a_fifo_is_refused_without_blocking(model):
    os.mkfifo(model.parent / "fifo.data")  # opening it for reading would block forever
    _edit_entries(model, location="fifo.data")
    with pytest.raises(ModelLoadError, match="not a regular file"):
        load(model)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"offset": "-1"}, r"offset '-1' is not a non-negative integer"),
        ({"offset": "-4096", "length": "10"}, "not a non-negative integer"),
        ({"offset": "abc"}, "offset 'abc' is not"),
        ({"offset": "1e3"}, "not a non-negative integer"),
        ({"length": "-5"}, r"length '-5' is not"),
        ({"length": "0x10"}, "not a non-negative integer"),
        ({"offset": str(TENSOR_BYTES)}, "past the end of the file"),  # the tensor's bytes
        ({"offset": str(2**63)}, "past the end of the file"),
        ({"offset": "4", "length": str(TENSOR_BYTES)}, "past the end of the file"),
        ({"length": str(2**64)}, "past the end of the file"),
        ({"length": "100"}, "less than the 16384 bytes"),  # shorter than the tensor
        ({"offset": "1", "length": None}, "past the end of the file"),  # no length: dims decide
    ],
)
def test_offsets_and_lengths_outside_the_file(model, entries, message):
    _edit_entries(model, **entries)
    with pytest.raises(ModelLoadError, match=message):
        load(model)


def test_repeated_location_entries_are_refused(model, tmp_path):
    # onnx reads the last "location"; a reader taking the first would read an unchecked file.
    proto = onnx.load(str(model), load_external_data=False)
    proto.graph.initializer[0].external_data.add(key="location", value=DATA)
    proto.graph.initializer[0].external_data[0].value = "../secret"
    onnx.save(proto, str(model))
    with pytest.raises(ModelLoadError, match="two external-data 'location' entries"):
        load(model)


def test_external_data_errors_reach_the_cli_as_one_line(model):
    os.symlink(DATA, model.parent / "link.data")
    _edit_entries(model, location="link.data")
    result = run_cli("inspect", str(model))
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "symbolic link" in lines[-1]
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------- tampered artifacts
def _artifact(folder: Path) -> Path:
    folder.mkdir()
    (folder / "model.so").write_bytes(b"\x7fELF library")
    (folder / "weights.safetensors").write_bytes(b"weights")
    (folder / "sub").mkdir()
    (folder / "sub" / "manifest.json").write_text("{}")  # a nested artifact's manifest
    write_manifest(folder, {"name": "m", "target": {"kind": "llvm"}})
    read_manifest(folder)
    return folder


def test_every_file_is_hashed_nested_manifests_included(tmp_path):
    manifest = read_manifest(_artifact(tmp_path / "a"))
    assert set(manifest["files"]) == {"model.so", "weights.safetensors", "sub/manifest.json"}


@pytest.mark.parametrize("name", ["model.so", "weights.safetensors", "sub/manifest.json"])
def test_each_file_modified_or_removed_is_detected(tmp_path, name):
    folder = _artifact(tmp_path / "a")
    path = folder / name
    data = bytearray(path.read_bytes())
    data[0] ^= 1  # same size, different bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 differs"):
        read_manifest(folder)
    path.unlink()
    with pytest.raises(ArtifactError, match="is missing"):
        read_manifest(folder)


@pytest.mark.parametrize("name", ["extra.so", "model.onnx.data", "sub/evil.py", ".hidden"])
def test_an_added_file_is_detected(tmp_path, name):
    folder = _artifact(tmp_path / "a")
    (folder / name).write_bytes(b"added")
    with pytest.raises(ArtifactError, match="not listed in the manifest"):
        read_manifest(folder)


def test_an_added_symlink_is_detected(tmp_path):
    folder = _artifact(tmp_path / "a")
    os.symlink(folder / "model.so", folder / "other.so")
    with pytest.raises(ArtifactError, match="not listed"):
        read_manifest(folder)
    (folder / "other.so").unlink()
    os.symlink(folder / "sub", folder / "subdir")
    with pytest.raises(ArtifactError, match="not listed"):
        read_manifest(folder)


def test_a_listed_file_replaced_by_a_symlink_is_detected(tmp_path):
    folder = _artifact(tmp_path / "a")
    shutil.move(folder / "model.so", tmp_path / "model.so")
    os.symlink(tmp_path / "model.so", folder / "model.so")  # same bytes, through a link
    with pytest.raises(ArtifactError, match="model.so is missing"):
        read_manifest(folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["files"].pop("model.so"), "model.so: not listed in the manifest"),
        (lambda m: m["files"]["model.so"].update(sha256="0" * 64), "sha256 differs"),
        (lambda m: m["files"]["model.so"].update(bytes=1), "size 12 differs"),
        (lambda m: m["files"].update({"/etc/passwd": {"sha256": "", "bytes": 0}}), "unsafe"),
        (lambda m: m["files"].clear(), "lists no files"),
        (lambda m: m.update(format="other"), "not a compiler-artifact manifest"),
        (lambda m: m.update(format_version=0), "format version 0 is not supported"),
    ],
)
def test_edited_manifests_are_detected(tmp_path, edit, message):
    folder = _artifact(tmp_path / "a")
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        read_manifest(folder)


def test_manifest_that_is_not_an_object_is_refused(tmp_path):
    folder = _artifact(tmp_path / "a")
    for text in ("[]", "null", '"x"', "\xff\xfe"):
        (folder / "manifest.json").write_text(text, errors="surrogateescape")
        with pytest.raises(ArtifactError):
            read_manifest(folder)


# ----------------------------------------------------------------------------- no pickles
class _Payload:
    """Unpickling this would create the file ``path``: the proof that a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_calibration_npz_with_object_arrays_never_unpickles(tiny_onnx, tmp_path):
    marker = tmp_path / "pickle-ran"
    array = np.empty(1, dtype=object)
    array[0] = _Payload(marker)
    np.savez(tmp_path / "calib.npz", x=array)
    assert not marker.exists()
    out = tmp_path / "out"
    result = run_cli(
        "build", str(tiny_onnx), "-o", str(out), "--calibration", str(tmp_path / "calib.npz")
    )
    assert result.returncode != 0, result.stdout
    assert "pickle" in result.stderr.lower() or "object arrays" in result.stderr.lower()
    assert not marker.exists(), "loading the calibration file ran a pickle"
    assert not out.exists()


def test_calibration_npz_with_object_arrays_is_a_documented_error(tiny_onnx, tmp_path):
    from compiler.calibration import load_calibration

    np.savez(tmp_path / "calib.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CompilerError, match="calib.npz"):
        load_calibration(tmp_path / "calib.npz", load(tiny_onnx))
