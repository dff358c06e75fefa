"""GPTQ: it lowers the layer's output error on the calibration inputs below plain rounding."""

from __future__ import annotations

import numpy as np
import pytest

from passes.quantize.gptq import quantize_gptq
from passes.quantize.grid import quantize_rtn
from tests.passes.quantize.models import correlated_inputs


def _output_error(x, w, q):
    return np.linalg.norm(x @ (q.dequantize() - w).T) / np.linalg.norm(x @ w.T)


@pytest.mark.parametrize(
    ("bits", "group", "symmetric"), [(4, 32, True), (4, 0, False), (8, 0, True)]
)
def test_gptq_beats_rtn_on_calibration_data(bits, group, symmetric):
    k, n = 128, 48
    x = correlated_inputs(512, k)
    w = np.random.default_rng(2).standard_normal((n, k)).astype(np.float32) / np.sqrt(k)
    rtn = quantize_rtn(w, bits, group, symmetric=symmetric)
    gptq = quantize_gptq(w, x.T @ x, bits, group, symmetric=symmetric)
    assert gptq.codes.shape == rtn.codes.shape and gptq.scales.shape == rtn.scales.shape
    held_out = correlated_inputs(256, k, seed=7)  # same distribution, unseen rows
    assert _output_error(held_out, w, gptq) < 0.8 * _output_error(held_out, w, rtn)


def test_gptq_zeroes_inputs_that_never_vary():
    k = 32
    x = correlated_inputs(64, k)
    x[:, 5] = 0.0
    w = np.random.default_rng(0).standard_normal((8, k)).astype(np.float32)
    q = quantize_gptq(w, x.T @ x, 4, 16)
    assert np.all(q.dequantize()[:, 5] == 0.0)
