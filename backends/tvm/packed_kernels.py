"""TIR kernels that read int4/int8 weights packed in tiles and dequantize on the fly.

Layout (built by :func:`backends.tvm.quantized.pack_tiles`): the weight ``W`` ``[N, K]`` is
stored as codes ``P`` uint8 ``[T, Kp, 16]``: tile ``t`` covers ``16 · 8/bits`` output channels;
for int8 byte ``P[t, k, j]`` is channel ``16t + j``; for int4 its low nibble is channel
``32t + j`` and its high nibble channel ``32t + 16 + j``. ``Kp`` is K rounded up to whole
groups. Scales ``S`` and (asymmetric) zero points ``Z`` are float32 ``[G, N]``::

    W[n, k] = (code(n, k) − z) · S[k // group, n]      (z = Z[k // group, n], or 2^(bits−1))

or, ``tiled`` (:func:`backends.tvm.int8_dot_kernels.tile_grid`, for ``N`` a multiple of the
tile), ``[T, G, tile]`` with ``S[g, n]`` at ``[n // tile, g, n % tile]``: a tile's scales are
then contiguous and stream in order with its codes, where ``[G, N]`` rows lie ``4N`` bytes apart
— a page, so a cache miss from DRAM, per group and tile in a GEMV.

Each tile's codes are contiguous, so a thread streams them; a row of 16 codes at one ``k`` is one
vector load.

* :func:`gemv_func` (few rows, the decode step): ``y[m, n] = Σ_g S[g, n] · (Σ_{k∈g} x[m, k] ·
  code(n, k) − z · Σ_{k∈g} x[m, k])`` — the scale and zero point leave the inner loop, which is one
  unpack, one int→float conversion and one fused multiply-add per code, vectorized over 16
  channels; tiles run in parallel, partial sums stay in registers.
* :func:`gather_rows` (embedding lookups): the rows ``W[ids]`` as float32, a TE computation left
  to the generic injective schedule (it is elementwise in its output).
* :func:`dequantize_func` (many rows, prefill): ``W`` as float32 ``[K, N]`` for a BLAS GEMM, whose
  cost the rows amortize. It is computed per call, never stored.

Both are returned scheduled (``tirx.is_scheduled``), so the generic schedule rules leave them be,
and opaque (``op_pattern`` 8), so fusion keeps them whole.
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx

from backends.tvm.panel_kernels import PANEL

__all__ = ["dequantize_func", "gemv_func", "grid_at", "padded_codes", "tile_channels"]

_OPAQUE = 8  # relax OpPatternKind::kOpaque


def tile_channels(bits: int) -> int:
    """Output channels per tile: 32 for int4, 16 for int8."""
    return 16 * (8 // bits)


def padded_codes(codes: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Codes ``[N, K]`` zero-padded to whole tiles of channels and whole groups of K."""
    n, k = codes.shape
    tile = tile_channels(bits)
    padded = np.zeros((-(-n // tile) * tile, -(-k // group) * group), np.uint8)
    padded[:n, :k] = codes
    return padded


def _placeholders(
    k: int, n: int, bits: int, group: int, symmetric: bool, quads: bool = False, tiled: bool = False
):
    """Packed codes, scales, zero points (None when symmetric) and the group count; ``quads``:
    in the int8-dot layouts (:mod:`backends.tvm.int8_dot_kernels`), whose scales are tiled;
    ``tiled``: scales and zero points per tile (see the module doc)."""
    tiles = -(-n // tile_channels(bits))
    groups = -(-k // group)
    grid = (tiles, groups, tile_channels(bits)) if quads or tiled else (groups, n)
    if quads:
        packed = te.placeholder((tiles, groups * group // 4, 16), "int32", "packed")
    else:
        packed = te.placeholder((tiles, groups * group, 16), "uint8", "packed")
    scales = te.placeholder(grid, "float32", "scales")
    zeros = None if symmetric else te.placeholder(grid, "float32", "zeros")
    return packed, scales, zeros, groups


def _code(packed, bits: int, k, n):
    tile = tile_channels(bits)
    byte = packed[n // tile, k, n % 16]
    if bits == 8:
        return byte
    shift = ((n % tile) // 16 * 4).astype("uint8")
    return (byte >> shift) & tirx.const(15, "uint8")


def grid_at(grid, bits: int, g, n, tiled: bool):
    """TE: scale or zero point ``[g, n]`` of a ``[G, N]`` grid, or a ``tiled`` one."""
    if not tiled:
        return grid[g, n]
    tile = tile_channels(bits)
    return grid[n // tile, g, n % tile]


def _zero(zeros, bits: int, g, n, tiled: bool = False):
    if zeros is None:
        return tirx.const(2 ** (bits - 1), "float32")
    return grid_at(zeros, bits, g, n, tiled)


def _finish(sch: s_tir.Schedule) -> tirx.PrimFunc:
    func = sch.mod["main"]
    return func.with_attr({"tirx.is_scheduled": True, "op_pattern": _OPAQUE})


def gemv_func(
    rows: int, k: int, n: int, *, bits: int, group: int, symmetric: bool, tiled: bool = False
) -> tirx.PrimFunc:
    """``y = x · Wᵀ`` for ``x`` ``[rows, k]`` (see the module doc), scheduled for the CPU;
    ``tiled``: scales and zero points ``[T, G, tile]``."""
    packed, scales, zeros, groups = _placeholders(k, n, bits, group, symmetric, tiled=tiled)
    x = te.placeholder((rows, k), "float32", "x")

    def x_at(m, col):  # zero past K: the last group may be short
        if k % group == 0:
            return x[m, col]
        return tirx.if_then_else(col < k, x[m, tirx.min(col, k - 1)], tirx.const(0.0, "float32"))

    kx = te.reduce_axis((0, group), "kx")
    x_sum = te.compute(
        (rows, groups), lambda m, g: te.sum(x_at(m, g * group + kx), axis=kx), name="x_sum"
    )
    kk = te.reduce_axis((0, group), "kk")
    partial = te.compute(
        (rows, groups, n),
        lambda m, g, c: te.sum(
            x_at(m, g * group + kk) * _code(packed, bits, g * group + kk, c).astype("float32"),
            axis=kk,
        ),
        name="partial",
    )
    gr = te.reduce_axis((0, groups), "g")
    y = te.compute(
        (rows, n),
        lambda m, c: te.sum(
            grid_at(scales, bits, gr, c, tiled)
            * (partial[m, gr, c] - _zero(zeros, bits, gr, c, tiled) * x_sum[m, gr]),
            axis=gr,
        ),
        name="y",
    )
    args = [x, packed, scales, *([zeros] if zeros is not None else []), y]
    sch = s_tir.Schedule(te.create_prim_func(args))
    tile = tile_channels(bits)
    block, part = sch.get_sblock("y"), sch.get_sblock("partial")
    m, c, g = sch.get_loops(block)
    t, lane = sch.split(c, [None, tile])
    sch.reorder(m, t, g, lane)
    outer = sch.fuse(m, t)
    sch.parallel(outer)
    write = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(write, outer)
    sch.compute_at(part, g)
    channel, red = sch.get_loops(part)[-2:]
    sch.reorder(red, channel)
    half, vec = sch.split(channel, [8 // bits, 16])
    sch.vectorize(vec)
    sch.unroll(half)
    sch.set_scope(part, 0, "local")
    sch.decompose_reduction(part, red)
    sch.vectorize(sch.get_loops(block)[-1])
    sch.decompose_reduction(block, g)
    for name in ("y_init", "y_local", "partial_init"):
        sch.vectorize(sch.get_loops(sch.get_sblock(name))[-1])
    return _finish(sch)


def dequantize_func(
    k: int,
    n: int,
    *,
    bits: int,
    group: int,
    symmetric: bool,
    quads: bool = False,
    panels: bool = False,
    tiled: bool = False,
) -> tirx.PrimFunc:
    """``W`` float32 ``[k, n]`` from the packed codes, parallel over K, vectorized over N.

    ``quads``: the codes are in the int8-dot layout (:mod:`backends.tvm.int8_dot_kernels`), its
    scales tiled; ``tiled``: scales and zero points ``[T, G, tile]`` (see the module doc).
    ``panels``: ``W`` is written as the panel GEMM's ``[⌈n/32⌉, k, 32]`` (zero past ``n``,
    :mod:`backends.tvm.panel_kernels`) instead.
    """
    packed, scales, zeros, _ = _placeholders(k, n, bits, group, symmetric, quads, tiled)
    if quads:  # that module builds on this one
        from backends.tvm.int8_dot_kernels import dequantized_code as code
    else:
        code = _code
    tiled = tiled or quads

    def weight(r, c):
        g = r // group
        scale = grid_at(scales, bits, g, c, tiled)
        return (
            code(packed, bits, r, c).astype("float32") - _zero(zeros, bits, g, c, tiled)
        ) * scale

    if panels:
        width = PANEL
        w = te.compute(
            (-(-n // width), k, width),
            lambda p, r, j: tirx.if_then_else(
                p * width + j < n,
                weight(r, tirx.min(p * width + j, n - 1)),
                tirx.const(0.0, "float32"),
            ),
            name="w",
        )
    else:
        w = te.compute((k, n), weight, name="w")
    args = [packed, scales, *([zeros] if zeros is not None else []), w]
    sch = s_tir.Schedule(te.create_prim_func(args))
    block = sch.get_sblock("w")
    if panels:
        p, r, j = sch.get_loops(block)
        sch.parallel(sch.fuse(p, r))
        sch.vectorize(j)
        return _finish(sch)
    r, c = sch.get_loops(block)
    sch.parallel(r)
    if n % 16 == 0:
        _, vec = sch.split(c, [None, 16])
        sch.vectorize(vec)
    return _finish(sch)


def gather_rows(ids: te.Tensor, packed, scales, zeros, *, k: int, n: int, bits: int, group: int):
    """TE: ``out[..., c] = W[ids[...], c]`` (float32) for ``ids`` of any shape (negative ids
    count from the end, as in ONNX ``Gather``)."""

    def row_of(*index):
        *position, col = index
        raw = ids[tuple(position)]
        row = tirx.if_then_else(raw < 0, raw + n, raw).astype("int32")
        g = col // group
        return (_code(packed, bits, col, row).astype("float32") - _zero(zeros, bits, g, row)) * (
            scales[g, row]
        )

    return te.compute((*ids.shape, k), row_of, name="gathered_rows")
