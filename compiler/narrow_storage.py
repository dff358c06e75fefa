"""How tensors of narrow dtypes cross a compiled library's boundary: one byte per element.

TVM cannot hold or compute with the ONNX dtypes narrower than a byte or without CPU arithmetic
(float8 variants, float8e8m0, float4e2m1, int4/uint4, int2/uint2): it packs sub-byte tensors and
its LLVM code has no float8 conversions. The TVM backend therefore keeps such a tensor, inside the
library, in a *storage* dtype of one byte per element (:mod:`backends.tvm.narrow_dtypes`):

* floats (``float8_*``, ``float4_e2m1fn``): their bit pattern, as ``uint8`` (a float4 code in the
  low 4 bits) — exactly ml_dtypes' in-memory layout, so the conversion is a ``view``;
* signed integers (``int4``, ``int2``): their value, as ``int8``;
* unsigned integers (``uint4``, ``uint2``): their value, as ``uint8``.

Users, the manifest and the ONNX model see the ONNX dtype (ml_dtypes' numpy types, as onnx's
``numpy_helper`` loads them); :mod:`compiler.runtime` converts with :func:`to_storage` and
:func:`from_storage` at the boundary. Needs numpy and ml_dtypes only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STORAGE_DTYPES", "from_storage", "to_storage"]

# numpy dtype name (ml_dtypes) -> storage dtype name inside the library.
STORAGE_DTYPES: dict[str, str] = {
    "float8_e4m3fn": "uint8",
    "float8_e4m3fnuz": "uint8",
    "float8_e5m2": "uint8",
    "float8_e5m2fnuz": "uint8",
    "float8_e8m0fnu": "uint8",
    "float4_e2m1fn": "uint8",
    "int4": "int8",
    "int2": "int8",
    "uint4": "uint8",
    "uint2": "uint8",
}
_VALUE_STORED = frozenset(("int4", "int2", "uint4", "uint2"))


def to_storage(array: np.ndarray) -> np.ndarray:
    """``array`` in its library storage dtype (itself when its dtype is not narrow)."""
    name = str(array.dtype)
    storage = STORAGE_DTYPES.get(name)
    if storage is None:
        return array
    if name in _VALUE_STORED:
        return array.astype(storage)
    return array.view(np.dtype(storage))


def from_storage(array: np.ndarray, dtype: str) -> np.ndarray:
    """A library result stored as ``STORAGE_DTYPES[dtype]`` back as ``dtype``; others as is.

    Integer values outside ``dtype``'s range wrap, as ml_dtypes' ``astype`` does (the library
    never produces them).
    """
    if dtype not in STORAGE_DTYPES or str(array.dtype) == dtype:
        return array
    import ml_dtypes

    target = np.dtype(getattr(ml_dtypes, dtype))
    if dtype in _VALUE_STORED:
        return array.astype(target)
    return array.view(target)
