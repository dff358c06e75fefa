"""backends/tvm/ops_signal.py: DFT/STFT as matmuls by DFT matrices, windows and mel filter
banks evaluated at import time; compiled with TVM and compared with onnxruntime and numpy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from backends.tvm.ops_signal import dft_matrix
from tests.backends.tvm.op_testing import check

pytestmark = pytest.mark.tvm


def _text(opset: int, body: str) -> str:
    return f'<ir_version: {onnx.IR_VERSION}, opset_import: ["" : {opset}]>\n{body}'


@pytest.mark.parametrize("n_in", [6, 8])
@pytest.mark.parametrize("length", [7, 8])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize(("inverse", "onesided"), [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_dft_matrix_matches_numpy_fft(n_in, length, channels, inverse, onesided):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n_in, channels))
    z = x[:, 0] + (1j * x[:, 1] if channels == 2 else 0)
    matrix, bins, out_channels = dft_matrix(
        n_in, channels, length, inverse=bool(inverse), onesided=bool(onesided)
    )
    y = (x.reshape(-1) @ matrix).reshape(bins, out_channels)
    if inverse and onesided:
        expected = np.fft.irfft(z, n=length)[:, None]
    else:
        spectrum = np.fft.ifft(z, n=length) if inverse else np.fft.fft(z, n=length)
        if onesided:
            spectrum = spectrum[: length // 2 + 1]
        expected = np.stack([spectrum.real, spectrum.imag], axis=-1)
    np.testing.assert_allclose(y, expected, atol=1e-12)


CASES = {
    "dft_onesided_padded_along_axis_1": _text(
        20,
        "g (float[2,6,3,1] x) => (float[2,5,3,2] y) <int64 n = {8}, int64 axis = {1}>"
        " { y = DFT <onesided = 1> (x, n, axis) }",
    ),
    "dft_inverse_complex_opset17": _text(
        17, "g (float[2,8,2] x) => (float[2,8,2] y) { y = DFT <inverse = 1, axis = 1> (x) }"
    ),
    "stft_with_window": _text(
        17,
        "g (float[2,64,1] x, float[16] w) => (float[2,7,9,2] y) <int64 step = {8}>"
        " { y = STFT <onesided = 1> (x, step, w) }",
    ),
    "hann_window_and_mel_weight_matrix": _text(
        17,
        "g () => (float[10] w, float[9,4] mel) <int64 size = {10}, int64 bins = {4},"
        " int64 n = {16}, int64 rate = {8000}, float low = {0.0}, float high = {4000.0}>"
        " { w = HannWindow <periodic = 0> (size)"
        " mel = MelWeightMatrix (bins, n, rate, low, high) }",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_onnxruntime(name):
    check(CASES[name], rtol=1e-4, atol=1e-5)
