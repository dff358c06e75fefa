"""Streaming safetensors files: readable by the safetensors library, and the other way round."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from compiler.safetensors_io import SafetensorsError, read_safetensors, write_safetensors

TENSORS = {
    "w": np.arange(12, dtype=np.float32).reshape(3, 4),
    "codes": np.arange(7, dtype=np.uint8),
    "scalar": np.array(2.5, np.float32),
    "ids": np.array([[1, -2]], np.int64),
    "half": np.array([0.5, -1.0, 3.0], np.float16),
}


def test_our_files_load_in_the_library(tmp_path):
    path = tmp_path / "ours.safetensors"
    write_safetensors(path, TENSORS, metadata={"format": "np"})
    loaded = load_file(str(path))
    assert set(loaded) == set(TENSORS)
    for name, array in TENSORS.items():
        np.testing.assert_array_equal(loaded[name].reshape(array.shape), array)
        assert loaded[name].dtype == array.dtype


def test_library_files_read_here_in_file_order(tmp_path):
    path = tmp_path / "theirs.safetensors"
    save_file(TENSORS, str(path))
    read = dict(read_safetensors(path))
    assert set(read) == set(TENSORS)
    for name, array in TENSORS.items():
        np.testing.assert_array_equal(read[name].reshape(array.shape), array)


def test_memory_mapped_weights_are_written_without_loading_them(tmp_path):
    source = tmp_path / "big.npy"
    np.save(source, np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32))
    mapped = np.load(source, mmap_mode="r")
    write_safetensors(tmp_path / "m.safetensors", {"m": mapped})
    ((_, array),) = read_safetensors(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(array, mapped)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[:4],  # shorter than the length prefix
        lambda b: (10**9).to_bytes(8, "little") + b[8:],  # header length beyond the file
        lambda b: b[:8] + b"x" + b[9:],  # header is not JSON
        lambda b: b[:-4],  # the last tensor runs past the end
    ],
)
def test_malformed_files_are_named_errors(tmp_path, corrupt):
    path = tmp_path / "w.safetensors"
    write_safetensors(path, TENSORS)
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(SafetensorsError, match="w.safetensors"):
        list(read_safetensors(path))
