"""Packing quantized weights into onnxruntime's ``com.microsoft::MatMulNBits`` layout.

``MatMulNBits(A, B, scales[, zero_points])`` computes ``Y = A · Wᵀ`` with ``W`` ``[N, K]``
dequantized block-wise along K: ``W[n, k] = (q[n, k] − z[n, b]) · s[n, b]``, ``b = k // block``.

* ``B``: uint8 ``[N, blocks, block·bits/8]``; for 4 bits, element ``2i`` of a block is the low
  nibble of byte ``i`` and element ``2i+1`` the high nibble. K is padded to whole blocks.
* ``scales``: ``[N · blocks]`` in A's float type; ``zero_points``: uint8 ``[N · ⌈blocks·bits/8⌉]``
  (4-bit codes packed in pairs, row by row); when absent it is ``2^(bits−1)`` (our symmetric grid).
* ``block_size`` must be a power of two ≥ 16: per-channel weights use one block of
  ``next_pow2(K)`` columns.
"""

from __future__ import annotations

import numpy as np

from passes.quantize.grid import QuantizedWeight

__all__ = ["block_size_for", "pack_matmul_nbits"]


def block_size_for(group: int, k: int) -> int:
    """The MatMulNBits block for a group size (``group`` ≤ 0 or ≥ K: one block per row)."""
    if group <= 0 or group >= k:
        return max(16, 1 << (k - 1).bit_length())
    return group


def _pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Pairs along the last axis: element 2i in the low nibble, 2i+1 in the high nibble."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), codes.dtype)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def pack_matmul_nbits(
    weight: QuantizedWeight, block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(B, scales, zero_points or None)`` for ``weight`` in MatMulNBits layout."""
    n, k = weight.shape
    if weight.group != block and not (weight.groups == 1 and block >= k):
        raise ValueError(f"group {weight.group} does not match block {block}")
    blocks = -(-k // block)
    codes = np.empty((n, blocks * block), np.uint8)
    codes[:, :k] = weight.codes
    # Padding columns hold the zero point: they dequantize to 0 (and A has no columns there).
    codes[:, k:] = weight.zero_points[:, -1:]
    codes = codes.reshape(n, blocks, block)
    packed = _pack_nibbles(codes) if weight.bits == 4 else codes
    scales = weight.scales.reshape(-1).astype(np.float32)
    zero_points = None
    if not weight.symmetric:
        zeros = weight.zero_points
        zero_points = (_pack_nibbles(zeros) if weight.bits == 4 else zeros).reshape(-1)
    return np.ascontiguousarray(packed), scales, zero_points
