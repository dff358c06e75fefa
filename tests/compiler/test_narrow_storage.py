"""``compiler.narrow_storage``: narrow dtypes to one byte per element and back, losslessly."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from compiler.narrow_storage import STORAGE_DTYPES, from_storage, to_storage


@pytest.mark.parametrize("name", sorted(STORAGE_DTYPES))
def test_round_trip_keeps_every_value(name):
    dtype = np.dtype(getattr(ml_dtypes, name))
    bits = {"int2": 2, "uint2": 2, "int4": 4, "uint4": 4, "float4_e2m1fn": 4}.get(name, 8)
    # Every code in ml_dtypes' layout (the low bits of a byte).
    array = np.arange(1 << bits, dtype=np.uint8).view(dtype).reshape(-1, 1)
    stored = to_storage(array)
    assert str(stored.dtype) == STORAGE_DTYPES[name]
    assert stored.shape == array.shape
    back = from_storage(stored, name)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back.view(np.uint8), array.view(np.uint8))


def test_integers_are_stored_as_values_and_floats_as_bits():
    np.testing.assert_array_equal(to_storage(np.array([-8, 7], ml_dtypes.int4)), [-8, 7])
    np.testing.assert_array_equal(to_storage(np.array([3], ml_dtypes.uint2)), [3])
    assert to_storage(np.array([1.0], ml_dtypes.float8_e4m3fn)).tolist() == [0x38]
    assert to_storage(np.array([-6.0], ml_dtypes.float4_e2m1fn)).tolist() == [0xF]


def test_other_dtypes_pass_through_unchanged():
    array = np.arange(4, dtype=np.float32)
    assert to_storage(array) is array
    assert from_storage(array, "float32") is array
    assert from_storage(np.array([1], np.uint8), "uint8").dtype == np.uint8
