"""The VNNI GEMV for ``accuracy_level=4``: its layout, its integer math against a numpy
emulation, and whole models against onnxruntime's own int8-activation kernels."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from backends.tvm.int8_dot_kernels import int8_dot_gemv_func, pack_quads, tile_grid
from backends.tvm.target import host_target
from compiler.numerics import max_error
from tests.backends.tvm.test_quantized import compile_quantized_linear

pytestmark = [
    pytest.mark.tvm,
    pytest.mark.skipif(
        not tvm.target.codegen.target_has_features("avx512vnni", tvm.target.Target(host_target())),
        reason="needs AVX512-VNNI",
    ),
]


@pytest.mark.parametrize("bits", [4, 8])
def test_quads_hold_four_columns_of_one_channel_per_word(bits):
    codes = np.random.default_rng(0).integers(0, 2**bits, (64, 40)).astype(np.uint8)
    quads = pack_quads(codes, bits, group=16)
    tile = 16 * 8 // bits
    assert quads.shape == (64 // tile, 48 // 4, 16) and quads.dtype == np.int32
    data = quads.view(np.uint8).reshape(*quads.shape, 4)
    for n in (0, 15, 16, 31, 63):
        for k in (0, 3, 4, 39):
            byte = data[n // tile, k // 4, n % 16, k % 4]
            code = byte if bits == 8 else (byte >> (4 * ((n % tile) // 16))) & 15
            assert code == codes[n, k]
    assert not data[:, 40 // 4 :].any()  # columns past K are zero


def _emulated(x, codes, scales, zeros, bits, group):
    """The kernel's function in float64: activations rounded per group, then exact sums."""
    rows, k = x.shape
    groups = scales.shape[0]
    padded = np.zeros((rows, groups * group))
    padded[:, :k] = x
    blocks = padded.reshape(rows, groups, group)
    top = np.abs(blocks).max(-1, keepdims=True)
    rounded = np.round(blocks * np.divide(127, top, out=np.zeros_like(top), where=top > 0))
    x_hat = (rounded * top / 127).reshape(rows, -1)[:, :k]
    z = np.full_like(scales, 2 ** (bits - 1)) if zeros is None else zeros
    expand = lambda grid: np.repeat(grid, group, axis=0)[:k]  # noqa: E731
    w = (codes.T - expand(z)) * expand(scales)  # [k, n]
    return x_hat @ w


@pytest.mark.parametrize(
    ("bits", "symmetric", "rows", "k", "group"),
    [(4, True, 1, 256, 128), (4, False, 2, 200, 32), (8, True, 3, 96, 16), (8, False, 1, 64, 64)],
)
def test_kernel_computes_the_int8_activation_product(bits, symmetric, rows, k, group):
    n = 64
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2**bits, (n, k)).astype(np.uint8)
    groups = -(-k // group)
    scales = (rng.random((groups, n)) * 0.1 + 0.01).astype(np.float32)
    zeros = None if symmetric else rng.integers(0, 2**bits, (groups, n)).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    x[0, :group] = 0.0  # an all-zero group: no scale, no division by zero
    func = int8_dot_gemv_func(rows, k, n, bits=bits, group=group, symmetric=symmetric)
    lib = tvm.compile(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=host_target()
    )
    args = [x, pack_quads(codes, bits, group), tile_grid(scales, bits)]
    args += [] if zeros is None else [tile_grid(zeros, bits)]
    args = [tvm.runtime.tensor(a) for a in [*args, np.zeros((rows, n), np.float32)]]
    lib["main"](*args)
    expected = _emulated(x.astype(np.float64), codes, scales, zeros, bits, group)
    got = args[-1].numpy()
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("rows", [1, 24])  # the VNNI GEMV; dequantize + GEMM on rounded rows
@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (8, False)])
def test_accuracy_level_4_matches_onnxruntimes_int8_kernels(rows, bits, symmetric):
    k, n = 512, 128  # quads of > 4096 words: a weight, not an inlined constant
    text = f"quantize(bits={bits},group=64,symmetric={str(symmetric).lower()},accuracy_level=4)"
    compiled, got, expected = compile_quantized_linear(rows, k, n, text)
    assert max_error({"y": got}, expected)["y"] <= 1e-5
    assert any(p.dtype == np.int32 for p in compiled.params)  # the int8-dot layout
    # and it is not the float computation: activations were rounded
    _, plain, _ = compile_quantized_linear(rows, k, n, text.replace(",accuracy_level=4", ""))
    assert max_error({"y": got}, {"y": plain})["y"] > 1e-4
