"""safetensors files written and read one tensor at a time (no second copy of the weights).

``safetensors.numpy.save_file`` turns every tensor into a ``bytes`` object before writing and
``load_file`` reads the whole file into memory, so each holds the weights twice at its peak — too
much for a model whose weights are most of the machine's memory. The format is simple enough to
stream (https://github.com/huggingface/safetensors, "Format")::

    u64 little-endian N | N bytes of JSON header | tensor data, back to back

The header maps each name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into
the data section) plus an optional ``"__metadata__"`` of strings; it is padded with spaces so the
data starts 8-byte aligned. Files written here are read by the ``safetensors`` library and the
other way round (tests check both).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

__all__ = ["read_safetensors", "write_safetensors"]

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16,
    "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip
_CODES = {np.dtype(t): code for code, t in _DTYPES.items()}
_MAX_HEADER = 100 << 20  # the library's own limit on header size


class SafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file (the message names it)."""


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: dict | None = None
) -> None:
    """Writes ``tensors`` (numpy arrays of the dtypes above; memory-mapped ones are read page by
    page) to ``path`` in order, one tensor at a time."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, array in tensors.items():
        dtype = np.dtype(array.dtype)
        if dtype not in _CODES:
            raise TypeError(f"safetensors: tensor {name!r} has unsupported dtype {dtype}")
        end = offset + array.nbytes
        header[name] = {
            "dtype": _CODES[dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for array in tensors.values():
            f.write(memoryview(np.ascontiguousarray(array).reshape(-1)).cast("B"))


def read_safetensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Yields ``(name, array)`` in file order, each read into its own array (plain reads, no
    memory map: only the tensor being read is in memory on top of what the caller keeps)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: too short for a safetensors file")
        length = int.from_bytes(raw, "little")
        if length > min(_MAX_HEADER, size - 8):
            raise SafetensorsError(f"{path}: header length {length} is beyond the file")
        try:
            header = json.loads(f.read(length))
        except ValueError as e:
            raise SafetensorsError(f"{path}: the header is not JSON: {e}") from e
        header.pop("__metadata__", None)
        start = 8 + length
        entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
        expected = 0
        for name, entry in entries:
            dtype = _DTYPES.get(entry.get("dtype"))
            begin, end = entry["data_offsets"]
            count = int(np.prod(entry["shape"], dtype=np.int64))
            if (
                dtype is None
                or begin != expected
                or end - begin != count * np.dtype(dtype).itemsize
            ):
                raise SafetensorsError(f"{path}: tensor {name!r} has an invalid header entry")
            if start + end > size:
                raise SafetensorsError(f"{path}: tensor {name!r} runs past the end of the file")
            f.seek(start + begin)
            array = np.fromfile(f, dtype=dtype, count=count).reshape(entry["shape"])
            expected = end
            yield name, array
