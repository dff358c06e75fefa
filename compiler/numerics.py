"""Output comparison and seeded example inputs, shared by tests, instruments and reports.

The error metric everywhere is the *normalized max error* of an output::

    err(actual, expected) = max |actual - expected| / max(max |expected|, tiny)

It is scale-aware like a relative error but stays finite where the reference crosses zero
(element-wise relative error explodes there). Integer and boolean outputs use the same formula on
their values. NaN in the same positions counts as equal; NaN anywhere else is an infinite error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["max_error", "normalized_error", "random_inputs"]

_TINY = 1e-30


def normalized_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """The normalized max error of one output (see module docstring)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        return float("inf")
    if actual.size == 0:
        return 0.0
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    a_nan, e_nan = np.isnan(a), np.isnan(e)
    if np.any(a_nan != e_nan):
        return float("inf")
    keep = ~e_nan
    if not np.any(keep):
        return 0.0
    a, e = a[keep], e[keep]
    scale = max(float(np.max(np.abs(e))), _TINY)
    return float(np.max(np.abs(a - e)) / scale)


def max_error(
    actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Per-output normalized max error; a missing output counts as an infinite error."""
    return {
        name: normalized_error(actual[name], ref) if name in actual else float("inf")
        for name, ref in expected.items()
    }


def random_inputs(
    specs: Sequence[tuple[str, np.dtype, Sequence[int]]], *, seed: int = 0, int_high: int = 2
) -> dict[str, np.ndarray]:
    """Seeded inputs for ``(name, dtype, shape)`` specs.

    Floats are standard normal; integers are uniform in ``[0, int_high)`` (the default 2 keeps
    token ids, token types and masks valid for any vocabulary); booleans are uniform.
    """
    rng = np.random.default_rng(seed)
    result: dict[str, np.ndarray] = {}
    for name, dtype, shape in specs:
        dtype = np.dtype(dtype)
        if dtype == np.bool_:
            result[name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            result[name] = rng.integers(0, int_high, size=shape).astype(dtype)
        else:
            result[name] = rng.standard_normal(size=shape).astype(dtype)
    return result
