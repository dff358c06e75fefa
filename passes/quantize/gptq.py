"""GPTQ: error-aware rounding of a weight using second-order statistics of its inputs.

For a linear layer ``y = W x`` with ``W`` of shape ``[N, K]`` and calibration inputs ``X``
(``[n, K]``), GPTQ (Frantar et al., 2022) minimizes ``‖X Wᵀ − X Ŵᵀ‖²`` column by column: after
rounding column ``k`` it spreads the rounding error over the not-yet-rounded columns ``j > k``
through the inverse Hessian ``H⁻¹`` with ``H = XᵀX``::

    e = (w_k − ŵ_k) / U[k, k]           W[:, j] −= e · U[k, j]      (j > k)

where ``U`` is the upper Cholesky factor of ``H⁻¹``. Updates are applied lazily in blocks (the
columns of one block, then one matrix product for the rest). Group scales and zero points are
chosen from the *updated* weights when a group starts, as in the reference method; per-channel
grids come from the original weights. ``damp`` adds ``damp · mean(diag H)`` to the diagonal.

Preconditions: ``hessian`` is ``XᵀX`` (any positive multiple) of the layer's real inputs. Inputs
that never vary (zero diagonal) get their weights zeroed, as they never contribute.
"""

from __future__ import annotations

import numpy as np

from passes.quantize.grid import QuantizedWeight, grid_for, quantize_with_grid

__all__ = ["quantize_gptq"]


def _inverse_cholesky_upper(hessian: np.ndarray, damp: float) -> np.ndarray:
    h = hessian.astype(np.float64, copy=True)
    diagonal = np.diag(h).copy()
    h[np.diag_indices_from(h)] += damp * max(float(diagonal.mean()), 1e-12)
    for attempt in range(6):
        try:
            lower = np.linalg.cholesky(h)
            break
        except np.linalg.LinAlgError:  # not positive definite: damp harder
            h[np.diag_indices_from(h)] += 10.0**attempt * damp * max(float(diagonal.mean()), 1e-12)
    else:
        raise np.linalg.LinAlgError("the Hessian stays singular after damping")
    inverse_lower = np.linalg.inv(lower)
    h_inv = inverse_lower.T @ inverse_lower
    return np.linalg.cholesky(h_inv).T  # upper factor: h_inv = Uᵀ U


def quantize_gptq(
    weight: np.ndarray,
    hessian: np.ndarray,
    bits: int,
    group: int,
    *,
    symmetric: bool = True,
    damp: float = 0.01,
) -> QuantizedWeight:
    """GPTQ-quantizes ``weight`` ``[N, K]`` given ``hessian`` ``[K, K]`` (see module doc)."""
    w = np.array(weight, dtype=np.float32)
    n, k = w.shape
    h = np.asarray(hessian, dtype=np.float64)
    dead = np.diag(h) == 0
    if dead.any():
        h = h.copy()
        h[dead, dead] = 1.0
        w[:, dead] = 0.0
    upper = _inverse_cholesky_upper(h, damp).astype(np.float32)

    size = k if group <= 0 else group
    groups = -(-k // size)
    codes = np.empty((n, k), np.uint8)
    scales = np.empty((n, groups), np.float32)
    zeros = np.empty((n, groups), np.uint8)
    if group <= 0:
        scale, zero = grid_for(w, bits, symmetric=symmetric)
        scales[:, 0], zeros[:, 0] = scale, zero
        block = 128
    else:
        block = size * max(1, 128 // size)  # whole groups per block
    for start in range(0, k, block):
        stop = min(start + block, k)
        w_block = w[:, start:stop].copy()
        errors = np.empty((n, stop - start), np.float32)
        for i in range(stop - start):
            col = start + i
            if group > 0 and col % size == 0:
                g = col // size
                scale, zero = grid_for(w_block[:, i : i + size], bits, symmetric=symmetric)
                scales[:, g], zeros[:, g] = scale, zero
            column = w_block[:, i]
            q = quantize_with_grid(column[:, None], scale, zero, bits)[:, 0]
            codes[:, col] = q
            error = (column - (q.astype(np.float32) - zero) * scale) / upper[col, col]
            w_block[:, i:] -= np.outer(error, upper[col, col:stop])
            errors[:, i] = error
        w[:, stop:] -= errors @ upper[start:stop, stop:]
    return QuantizedWeight(codes, scales, zeros, bits, size, symmetric)
