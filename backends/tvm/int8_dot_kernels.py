"""Decode-step GEMV on int4/int8 weights with integer dot products (AVX512-VNNI ``vpdpbusd``).

Opt-in, as onnxruntime's ``MatMulNBits`` ``accuracy_level=4``: the activations are quantized to
int8 per group of K at run time, then products are summed in int32 — 64 multiply-adds per
instruction, where the float kernel (:func:`backends.tvm.packed_kernels.gemv_func`) converts
every code to float32 first and is bound by that conversion, not by memory.

Layout (:func:`pack_quads`, :func:`tile_grid`): codes ``[N, K]`` become int32 words ``Q``
``[T, Kp/4, 16]``, scales (and zero points) ``[T, G, tile]``. Word
``Q[t, q, j]`` holds, in byte ``b``, the code of channel ``16t + j`` (int8) at ``k = 4q + b``;
for int4 the low nibble is channel ``32t + j`` and the high nibble channel ``32t + 16 + j``.
One 64-byte load then feeds ``vpdpbusd`` directly: lane ``j`` gets ``Σ_b code·x`` over 4 ``k``.

Math, per row ``m`` and group ``g`` of ``G`` columns (``z`` the zero point, ``S`` the scales)::

    s_x = max_k |x[m, k]| / 127,   x_q = clamp(round(x / s_x), −127, 127)   (int8)
    y[m, n] = Σ_g S[g, n] · s_x · (Σ_{k∈g} code(n, k) · x_q[k] − z · Σ_{k∈g} x_q[k])

The integer sums are exact (|Σ| ≤ 255 · 127 · G, far inside int32); the only new error is the
rounding of ``x`` to 8 bits per group (relative ~0.4% per element at worst, averaging out over
K). Prefill (more rows) dequantizes the weights for a GEMM instead, on activations rounded the
same way first (:func:`round_activations`), so every row count computes the same function.
Preconditions (:func:`supports`): ``G`` a multiple of 16, ``N`` of the tile (16 int8 / 32
int4 channels), and a target with ``avx512vnni``.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx
from tvm.script import tirx as T

from backends.tvm.packed_kernels import grid_at, padded_codes, tile_channels

__all__ = [
    "dequantized_code",
    "int8_dot_gemv_func",
    "pack_quads",
    "round_activations",
    "supports",
    "tile_grid",
    "tile_grid_at",
]

_OPAQUE = 8  # relax OpPatternKind::kOpaque
_UNROLL = 4  # independent int32 accumulators per half tile


def supports(n: int, bits: int, group: int) -> bool:
    """Whether the kernel takes this shape (see the module doc; the target is checked apart)."""
    return bits in (4, 8) and group % (4 * _UNROLL) == 0 and n % tile_channels(bits) == 0


def pack_quads(codes: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Codes ``[N, K]`` (uint8, one per weight) -> int32 words ``[T, Kp/4, 16]`` (module doc)."""
    padded = padded_codes(codes, bits, group)
    tiles, kp = padded.shape[0] // tile_channels(bits), padded.shape[1]
    # [T, halves, 16, Kp/4, 4] -> [T, Kp/4, 16, 4, halves]
    grid = padded.reshape(tiles, 8 // bits, 16, kp // 4, 4).transpose(0, 3, 2, 4, 1)
    data = grid[..., 0] if bits == 8 else grid[..., 0] | (grid[..., 1] << 4)
    return np.ascontiguousarray(data).view("<i4").reshape(tiles, kp // 4, 16)


def tile_grid(grid: np.ndarray, bits: int) -> np.ndarray:
    """Scales or zero points ``[G, N]`` -> ``[T, G, tile]``: each tile's own, contiguous.

    A tile then streams its codes *and* its scales in order; ``[G, N]`` rows are ``4N`` bytes
    apart, a cache miss per group and tile from DRAM (it halved the int4 GEMV's bandwidth).
    """
    groups, n = grid.shape
    tile = tile_channels(bits)
    return np.ascontiguousarray(grid.reshape(groups, n // tile, tile).transpose(1, 0, 2))


def tile_grid_at(grid, bits: int, g, n):
    """TE: entry ``[g, n]`` of a grid laid out by :func:`tile_grid`."""
    return grid_at(grid, bits, g, n, tiled=True)


def dequantized_code(packed, bits: int, k, n):
    """TE: the code of weight ``(n, k)`` (uint8 value, as int32) from quads."""
    tile = tile_channels(bits)
    word = packed[n // tile, k // 4, n % 16]
    byte = (word >> ((k % 4) * 8).astype("int32")) & 255
    if bits == 8:
        return byte
    return (byte >> ((n % tile) // 16 * 4).astype("int32")) & 15


def int8_dot_gemv_func(
    rows: int, k: int, n: int, *, bits: int, group: int, symmetric: bool
) -> tirx.PrimFunc:
    """``y = x · Wᵀ`` for ``x`` float32 ``[rows, k]`` on quads (see the module doc).

    Parameters ``(x, quads, scales [T, G, tile][, zeros [T, G, tile]], y [rows, n])``: scales
    and zero points per tile (:func:`tile_grid`).
    """
    tile, halves = tile_channels(bits), 8 // bits
    tiles, groups = n // tile, -(-k // group)
    kp = groups * group
    words = group // 4
    steps = words // _UNROLL
    unroll = _UNROLL
    lanes = T.ramp(0, 1, 16)

    def x_at(xb, m, col):  # zero past K: the last group may be short
        if k % group == 0:
            return xb[m, col]
        return T.if_then_else(col < k, xb[m, T.min(col, k - 1)], T.float32(0))

    def zero(zb, t_, g, c):
        return T.broadcast(T.float32(2 ** (bits - 1)), 16) if zb is None else zb[t_, g, c]

    def dot(acc, codes, xw):
        return T.call_llvm_pure_intrin(
            "int32x16",
            "llvm.x86.avx512.vpdpbusd.512",
            acc,
            T.reinterpret("uint8x64", codes),
            T.reinterpret("int8x64", xw),
        )

    @T.macro
    def body(X, P, S, Z, Y):
        amax = T.alloc_buffer((rows, groups), "float32")
        xq = T.alloc_buffer((rows, kp), "int32")
        xw = T.alloc_buffer((rows, kp // 4), "int32")
        xsum = T.alloc_buffer((rows, groups), "int32")
        for m, g in T.grid(rows, groups):
            amax[m, g] = T.float32(0)
            for i in range(group):
                amax[m, g] = T.max(amax[m, g], T.abs(x_at(X, m, g * group + i)))
            xsum[m, g] = 0
            for i in range(group):
                xq[m, g * group + i] = T.Cast(
                    "int32",
                    T.round(
                        x_at(X, m, g * group + i)
                        * T.if_then_else(amax[m, g] > 0, T.float32(127) / amax[m, g], T.float32(0))
                    ),
                )
                xsum[m, g] = xsum[m, g] + xq[m, g * group + i]
            for w in range(words):
                q = g * words + w
                xw[m, q] = (
                    (xq[m, 4 * q] & 255)
                    | ((xq[m, 4 * q + 1] & 255) << 8)
                    | ((xq[m, 4 * q + 2] & 255) << 16)
                    | ((xq[m, 4 * q + 3] & 255) << 24)
                )
        for t in T.parallel(tiles):
            acc = T.alloc_buffer((unroll, halves, 16), "int32", scope="local")
            out = T.alloc_buffer((halves, 16), "float32", scope="local")
            for m in range(rows):
                for h in T.unroll(halves):
                    out[h, lanes] = T.broadcast(T.float32(0), 16)
                for g in range(groups):
                    for u, h in T.grid(unroll, halves):
                        acc[u, h, lanes] = T.broadcast(0, 16)
                    for s in range(steps):
                        for u in T.unroll(unroll):
                            q = g * words + s * unroll + u
                            word = T.broadcast(xw[m, q], 16)
                            if bits == 8:
                                acc[u, 0, lanes] = dot(acc[u, 0, lanes], P[t, q, lanes], word)
                            else:
                                nibbles = T.broadcast(0x0F0F0F0F, 16)
                                low = P[t, q, lanes] & nibbles
                                high = (P[t, q, lanes] >> T.broadcast(4, 16)) & nibbles
                                acc[u, 0, lanes] = dot(acc[u, 0, lanes], low, word)
                                acc[u, 1, lanes] = dot(acc[u, 1, lanes], high, word)
                    for h in T.unroll(halves):
                        # channels h*16.. of the tile, written out where used: a ramp bound
                        # to a name becomes a let variable, and its loads turn into gathers
                        total = acc[0, h, lanes] + acc[1, h, lanes] + acc[2, h, lanes]
                        total = total + acc[3, h, lanes]
                        centered = T.Cast("float32x16", total) - zero(
                            Z, t, g, T.ramp(h * 16, 1, 16)
                        ) * T.broadcast(T.Cast("float32", xsum[m, g]), 16)
                        out[h, lanes] = (
                            out[h, lanes]
                            + S[t, g, T.ramp(h * 16, 1, 16)]
                            * T.broadcast(amax[m, g] / T.float32(127), 16)
                            * centered
                        )
                for h in T.unroll(halves):
                    Y[m, T.ramp(t * tile + h * 16, 1, 16)] = out[h, lanes]

    if symmetric:

        @T.prim_func(private=True)
        def func(x_: T.handle, p_: T.handle, s_: T.handle, y_: T.handle):
            X = T.match_buffer(x_, (rows, k), "float32")
            P = T.match_buffer(p_, (tiles, kp // 4, 16), "int32")
            S = T.match_buffer(s_, (tiles, groups, tile), "float32")
            Y = T.match_buffer(y_, (rows, n), "float32")
            body(X, P, S, None, Y)

    else:

        @T.prim_func(private=True)
        def func(x_: T.handle, p_: T.handle, s_: T.handle, z_: T.handle, y_: T.handle):
            X = T.match_buffer(x_, (rows, k), "float32")
            P = T.match_buffer(p_, (tiles, kp // 4, 16), "int32")
            S = T.match_buffer(s_, (tiles, groups, tile), "float32")
            Z = T.match_buffer(z_, (tiles, groups, tile), "float32")
            Y = T.match_buffer(y_, (rows, n), "float32")
            body(X, P, S, Z, Y)

    return func.with_attr({"tirx.is_scheduled": True, "op_pattern": _OPAQUE, "tirx.noalias": True})


def round_activations(x: te.Tensor, group: int) -> te.Tensor:
    """TE: ``x`` (``[..., K]``) with each group of ``group`` columns rounded to its int8 grid,
    ``x_q · s_x`` (see the module doc), in float32."""
    k = int(x.shape[-1])
    groups = -(-k // group)
    i = te.reduce_axis((0, group), "i")

    def at(index, col):
        return tirx.if_then_else(col < k, x[(*index, tirx.min(col, k - 1))], tirx.const(0.0))

    amax = te.compute(
        (*x.shape[:-1], groups),
        lambda *idx: te.max(tirx.abs(at(idx[:-1], idx[-1] * group + i)), axis=i),
        name="amax",
    )

    def rounded(*idx):
        top = amax[(*idx[:-1], idx[-1] // group)]
        inverse = tirx.Select(top > 0, tirx.const(127.0) / top, tirx.const(0.0))
        return tirx.round(x[idx] * inverse) * (top / tirx.const(127.0))

    return te.compute(x.shape, rounded, name="rounded_activations")
