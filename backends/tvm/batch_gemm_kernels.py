"""A float32 batched GEMM micro-kernel in TIR for products of two activations (attention).

:func:`batch_gemm_func` computes, for static shapes,

    C[t, i, j] = Σ_k A[t, i, k] · B[t, k, j]        A [T, M, K], B [T, K, N], C [T, M, N]

— attention's scores ``Q · Kᵀ`` (``Kᵀ`` already laid out ``[K, N]``) and its context ``P · V``.
Both operands change every run, so nothing is packed ahead: a row ``B[t, k, :]`` is already
contiguous, and the kernel reads it in place. Blocks of ``ROWS`` rows of one matrix run in
parallel (``T · ⌊M / ROWS⌋`` tasks, 192 for GPT-2's 12 heads × 128 tokens); a block keeps a
``ROWS × 32`` tile of ``C`` in sixteen AVX-512 registers while ``k`` runs over ``K``::

    acc[i, j] += A[t, r + i, k] · B[t, k, c + j]        i < ROWS, j < 32

— per ``k``, two vector loads of ``B``, ``ROWS`` broadcasts of ``A`` and sixteen fused
multiply-adds, as in :mod:`backends.tvm.panel_kernels`. Columns past the last multiple of 32
run as one narrower tile (its vectors as wide as they are; LLVM splits them), and rows past the
last full block (a decode step's single query row) one at a time.

Kernels with fewer than ``PARALLEL_MIN_FLOPS`` multiply-adds run on one thread: waking the pool
costs more than a decode step's per-head products.

The kernel is returned scheduled (``tirx.is_scheduled``) and opaque, as the panel GEMM is.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

__all__ = ["PARALLEL_MIN_FLOPS", "ROWS", "batch_gemm_func"]

ROWS = 8  # rows per register tile: 8 × 2 accumulators of the 32 vector registers
_WIDE = 32  # columns per tile: two AVX-512 vectors
PARALLEL_MIN_FLOPS = 1 << 18  # multiply-adds
_OPAQUE = 8  # relax OpPatternKind::kOpaque


def batch_gemm_func(batch: int, m: int, k: int, n: int) -> tirx.PrimFunc:
    """``C[t] = A[t] · B[t]`` for ``A`` ``[batch, m, k]``, ``B`` ``[batch, k, n]`` (static)."""
    rows = ROWS
    blocks = m // rows  # full row blocks per matrix
    left = m - blocks * rows  # rows after them
    wide = n // _WIDE  # 32-column strips
    tail = n - wide * _WIDE  # columns after them: one narrower tile
    parallel = batch * m * k * n >= PARALLEL_MIN_FLOPS
    wide_ = _WIDE

    @T.macro
    def tile(A, B, C, t, r, c, height, width):
        acc = T.alloc_buffer((height, width), "float32", scope="local")
        for i in T.unroll(height):
            for j in T.vectorized(width):
                acc[i, j] = T.float32(0)
        for kk in range(k):
            for i in T.unroll(height):
                for j in T.vectorized(width):
                    acc[i, j] = acc[i, j] + A[t, r + i, kk] * B[t, kk, c + j]
        for i in T.unroll(height):
            for j in T.vectorized(width):
                C[t, r + i, c + j] = acc[i, j]

    @T.macro
    def strips(A, B, C, t, r, height):
        for s in range(wide):
            tile(A, B, C, t, r, s * wide_, height, wide_)
        if tail > 0:
            tile(A, B, C, t, r, wide * wide_, height, tail)

    loop = T.parallel if parallel else T.serial

    @T.prim_func(private=True)
    def bmm(a_: T.handle, b_: T.handle, c_: T.handle):
        A = T.match_buffer(a_, (batch, m, k), "float32")
        B = T.match_buffer(b_, (batch, k, n), "float32")
        C = T.match_buffer(c_, (batch, m, n), "float32")
        if blocks > 0:
            for task in loop(batch * blocks):
                strips(A, B, C, task // blocks, task % blocks * rows, rows)
        if left > 0:
            for t in loop(batch):
                for r in range(left):
                    strips(A, B, C, t, blocks * rows + r, 1)

    return bmm.with_attr({"tirx.is_scheduled": True, "op_pattern": _OPAQUE, "tirx.noalias": True})
