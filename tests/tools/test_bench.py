"""tools/bench.py's GEMV chain: the model it times is the math it claims."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir

from backends.onnxruntime.reference import ReferenceSession

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import bench


def test_gemv_chain_is_a_product_of_square_weights(tmp_path):
    model = bench.gemv_chain(k=64, layers=3, seed=1)
    weights = [model.graph.initializers[f"w{i}"].const_value.numpy() for i in range(3)]
    assert all(w.dtype == np.float32 and w.shape == (64, 64) for w in weights)
    ir.save(model, tmp_path / "g.onnx")
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    (y,) = ReferenceSession(tmp_path / "g.onnx").run({"x": x}).values()
    np.testing.assert_allclose(y, x @ weights[0] @ weights[1] @ weights[2], rtol=1e-5, atol=1e-6)


def test_every_gemv_chain_streams_at_least_the_byte_budget():
    """Each variant's chain is the shortest whose weights reach GEMV_MIN_BYTES (8x the L3)."""
    per_layer = {bits: bench.GEMV_K**2 * bits // 8 for bits in (4, 8, 32)}
    assert {bits: bench.gemv_layers(bits) for bits in per_layer} == {4: 32, 8: 16, 32: 4}
    for bits, _ in bench.GEMV_VARIANTS.values():
        layers = bench.gemv_layers(bits)
        assert layers * per_layer[bits] >= bench.GEMV_MIN_BYTES > (layers - 1) * per_layer[bits]
