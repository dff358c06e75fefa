"""The integer grid and MatMulNBits packing: rounding bounds, zero handling, layouts."""

from __future__ import annotations

import numpy as np
import pytest

from passes.quantize.grid import quantize_rtn
from passes.quantize.matmul_nbits import block_size_for, pack_matmul_nbits


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("k", "group"), [(64, 16), (40, 16), (96, 0)])
def test_rtn_error_is_at_most_half_a_step(bits, symmetric, k, group):
    w = np.random.default_rng(0).standard_normal((12, k)).astype(np.float32)
    q = quantize_rtn(w, bits, group, symmetric=symmetric)
    assert q.codes.shape == (12, k) and q.codes.max() < 2**bits
    assert q.scales.shape == (12, -(-k // (group or k)))
    step = np.repeat(q.scales, q.group, axis=1)[:, :k]
    assert np.all(np.abs(q.dequantize() - w) <= step / 2 + 1e-6)


def test_symmetric_grid_is_symmetric_and_asymmetric_keeps_zero_exact():
    w = np.array([[-1.0, 0.0, 0.5, 0.25] * 4], np.float32)
    sym = quantize_rtn(w, 4, 16, symmetric=True)
    assert np.all(sym.zero_points == 8)
    assert sym.dequantize()[0, 0] == pytest.approx(-1.0)
    assert sym.codes.min() >= 1  # ±7 around 8: the code 0 is unused
    positive = np.abs(w) + 1.0  # all positive: the asymmetric range still includes 0
    asym = quantize_rtn(np.concatenate([positive, w * 0]), 4, 16, symmetric=False)
    assert np.all(asym.dequantize()[1] == 0.0)


def test_all_zero_rows_quantize_to_zero():
    q = quantize_rtn(np.zeros((3, 32), np.float32), 4, 16)
    assert np.all(q.dequantize() == 0.0) and np.all(q.scales > 0)


def test_block_size_is_a_power_of_two_covering_per_channel_rows():
    assert block_size_for(0, 576) == 1024
    assert block_size_for(128, 576) == 128
    assert block_size_for(32, 20) == 32


@pytest.mark.parametrize("bits", [4, 8])
def test_matmul_nbits_layout(bits):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 40)).astype(np.float32)
    q = quantize_rtn(w, bits, 16, symmetric=False)
    packed, scales, zeros = pack_matmul_nbits(q, 16)
    blocks = 3  # 40 columns in blocks of 16, the last one padded
    assert packed.shape == (5, blocks, 16 * bits // 8) and packed.dtype == np.uint8
    assert scales.shape == (5 * blocks,)
    codes = packed.reshape(5, -1)
    if bits == 4:
        unpacked = np.empty((5, codes.shape[1] * 2), np.uint8)
        unpacked[:, 0::2], unpacked[:, 1::2] = codes & 15, codes >> 4
        codes = unpacked
        assert zeros.shape == (5 * 2,)  # 3 four-bit zero points per row, padded to 2 bytes
    np.testing.assert_array_equal(codes[:, :40], q.codes)
    np.testing.assert_array_equal(codes[:, 40:], np.repeat(q.zero_points[:, -1:], 8, axis=1))
