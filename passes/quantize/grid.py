"""Integer grids for weights: group-wise scales and zero points, rounding, and dequantization.

A weight ``W`` of shape ``[N, K]`` (N output channels, K the reduction axis — the layout of
``MatMulNBits`` and of an embedding table) is cut along K into groups of ``group`` columns (the
last group may be shorter). Each (row, group) gets a scale ``s`` and an integer zero point ``z``
on the unsigned grid ``0 … 2^bits − 1``::

    q = clip(round(w / s) + z, 0, 2^bits − 1)        w ≈ (q − z) · s

* symmetric: ``z = 2^(bits−1)`` and ``s = max|w| / (2^(bits−1) − 1)`` (the code ``0`` is unused,
  so the grid is symmetric around zero: ±7 for int4, ±127 for int8);
* asymmetric: ``s = (max(w, 0) − min(w, 0)) / (2^bits − 1)`` and ``z = round(−min(w, 0) / s)``
  (the range always contains 0, so zero weights stay exact).

``group = 0`` means one group per row (per-output-channel quantization).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["QuantizedWeight", "grid_for", "quantize_rtn", "quantize_with_grid"]


@dataclasses.dataclass
class QuantizedWeight:
    """Codes ``q`` (uint8, ``[N, K]``), ``scales`` and ``zero_points`` (``[N, G]``)."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    bits: int
    group: int  # columns per group (K itself for per-channel)
    symmetric: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    @property
    def groups(self) -> int:
        return self.scales.shape[1]

    def dequantize(self) -> np.ndarray:
        """``(q − z) · s`` as float32 ``[N, K]``."""
        k = self.codes.shape[1]
        scale = np.repeat(self.scales, self.group, axis=1)[:, :k]
        zero = np.repeat(self.zero_points.astype(np.float32), self.group, axis=1)[:, :k]
        return ((self.codes.astype(np.float32) - zero) * scale).astype(np.float32)


def _group_size(k: int, group: int) -> int:
    return k if group <= 0 else group


def grid_for(weight: np.ndarray, bits: int, *, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point per row for the columns of ``weight`` ``[N, k]`` (one group).

    Returns float32 ``scale`` and float32 integer-valued ``zero`` of shape ``[N]``.
    """
    qmax = 2**bits - 1
    if symmetric:
        half = 2 ** (bits - 1)
        scale = np.abs(weight).max(axis=1) / (half - 1)
        zero = np.full(weight.shape[0], half, np.float32)
    else:
        low = np.minimum(weight.min(axis=1), 0.0)
        high = np.maximum(weight.max(axis=1), 0.0)
        scale = (high - low) / qmax
        safe = np.where(scale > 0, scale, 1.0)
        zero = np.clip(np.round(-low / safe), 0, qmax)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # all-zero rows: any scale works
    return scale, zero.astype(np.float32)


def quantize_with_grid(
    weight: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int
) -> np.ndarray:
    """Codes for ``weight`` ``[N, k]`` on a per-row grid (``scale``, ``zero`` of shape ``[N]``)."""
    q = np.round(weight / scale[:, None]) + zero[:, None]
    return np.clip(q, 0, 2**bits - 1).astype(np.uint8)


def quantize_rtn(
    weight: np.ndarray, bits: int, group: int, *, symmetric: bool = True
) -> QuantizedWeight:
    """Round-to-nearest quantization of ``weight`` ``[N, K]`` (float) group by group."""
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"bits must be 2, 3, 4 or 8, not {bits}")
    weight = np.asarray(weight, dtype=np.float32)
    n, k = weight.shape
    size = _group_size(k, group)
    groups = -(-k // size)
    codes = np.empty((n, k), np.uint8)
    scales = np.empty((n, groups), np.float32)
    zeros = np.empty((n, groups), np.uint8)
    for g in range(groups):
        cols = slice(g * size, min((g + 1) * size, k))
        scale, zero = grid_for(weight[:, cols], bits, symmetric=symmetric)
        codes[:, cols] = quantize_with_grid(weight[:, cols], scale, zero, bits)
        scales[:, g], zeros[:, g] = scale, zero
    return QuantizedWeight(codes, scales, zeros, bits, size, symmetric)
