"""Quantized matmuls in the TVM backend: packed weights stay packed, and the fused GEMV and the
dequantize + GEMM paths compute what onnxruntime's MatMulNBits computes."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from backends.onnxruntime.reference import run_reference
from backends.tvm import compile_model
from backends.tvm.quantized import GEMV_MAX_ROWS, pack_tiles
from compiler.numerics import max_error
from compiler.pass_manager import PassManager
from compiler.pipeline import build_passes
from tests.passes.quantize.models import correlated_inputs, linear_model

pytestmark = pytest.mark.tvm


def _quantized(model, text):
    return PassManager(build_passes(text)).run(model).model


def _run_tvm(compiled, feeds):
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    args = [tvm.runtime.tensor(feeds[name]) for name in compiled.input_names]
    out = vm["main"](*args, *[tvm.runtime.tensor(p) for p in compiled.params])
    outs = [out] if hasattr(out, "numpy") else list(out)
    return [o.numpy() for o in outs]


def compile_quantized_linear(rows: int, k: int, n: int, text: str):
    """``(compiled, TVM's y, onnxruntime's outputs)`` for a ``[1, rows, k] · [k, n]`` layer
    quantized by the pipeline ``text``."""
    quantized = _quantized(linear_model(rows, k, n, layers=1), text)
    feeds = {"x": correlated_inputs(rows, k)[None]}
    compiled = compile_model(quantized)
    (got,) = _run_tvm(compiled, feeds)
    return compiled, got, run_reference(quantized, feeds)


@pytest.mark.parametrize("bits", [4, 8])
def test_tile_layout(bits):
    codes = np.random.default_rng(0).integers(0, 2**bits, (70, 20)).astype(np.uint8)
    tiles = pack_tiles(codes, bits, group=16)
    tile = 16 * 8 // bits
    assert tiles.shape == (-(-70 // tile), 32, 16)
    for n in (0, 15, 16, 31, 69):
        for k in (0, 7, 19):
            byte = tiles[n // tile, k, n % 16]
            code = byte if bits == 8 else (byte >> (4 * ((n % tile) // 16))) & 15
            assert code == codes[n, k]


@pytest.mark.parametrize("rows", [1, GEMV_MAX_ROWS, 24])  # fused GEMV, GEMV, dequantize + GEMM
@pytest.mark.parametrize(
    ("bits", "group", "symmetric"),
    [(4, 16, True), (4, 32, False), (8, 0, True), (8, 0, False), (8, 16, False)],
)
def test_tvm_matches_onnxruntime(rows, bits, group, symmetric):
    k, n = 80, 72  # K not a multiple of 32; N not a multiple of the 32-channel int4 tile
    text = f"quantize(bits={bits},group={group},symmetric={str(symmetric).lower()})"
    compiled, got, expected = compile_quantized_linear(rows, k, n, text)
    assert max_error({"y": got}, expected)["y"] <= 1e-5
    # Only packed codes and scales are weights: no float copy of the matrix.
    assert all(p.size < k * n for p in compiled.params if p.dtype == np.float32)
    assert any(p.dtype == np.uint8 for p in compiled.params)


@pytest.mark.parametrize("rows", [1, 24])
@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (4, False), (8, False)])
def test_scales_are_laid_out_per_tile_when_n_fills_whole_tiles(rows, bits, symmetric):
    """N = 96: three int4 tiles of 32 (six int8 tiles of 16): scales and zero points
    ``[T, G, tile]``, each tile's contiguous for the GEMV; N = 72 keeps ``[G, N]``."""
    tile = 16 * 8 // bits
    text = f"quantize(bits={bits},group=16,symmetric={str(symmetric).lower()})"
    for n, tiled in ((96, True), (72, False)):
        compiled, got, expected = compile_quantized_linear(rows, 80, n, text)
        assert max_error({"y": got}, expected)["y"] <= 1e-5
        grids = [p.shape for p in compiled.params if p.dtype == np.float32]
        wanted = (n // tile, 5, tile) if tiled else (5, n)
        assert grids and all(shape == wanted for shape in grids), (n, grids)


@pytest.mark.parametrize(("bits", "symmetric"), [(4, False), (8, True)])
def test_prefill_dequantizes_into_panels_for_the_gemm_kernel(bits, symmetric):
    """N = 160: five panels of 32, so many-row products run the panel GEMM kernel."""
    text = f"quantize(bits={bits},group=16,symmetric={str(symmetric).lower()})"
    _, got, expected = compile_quantized_linear(24, 80, 160, text)
    assert max_error({"y": got}, expected)["y"] <= 1e-5


def test_a_stack_of_layers_and_tied_weights_compile_to_packed_weights():
    model = linear_model(1, 64, 64, layers=3)
    quantized = _quantized(model, "quantize(bits=4,group=32)")
    compiled = compile_model(quantized)
    feeds = {"x": correlated_inputs(1, 64)[None]}
    (got,) = _run_tvm(compiled, feeds)
    assert max_error({"y": got}, run_reference(quantized, feeds))["y"] <= 1e-5
    packed = sum(p.nbytes for p in compiled.params)
    assert packed < 3 * 64 * 64 * 4 * 0.2  # int4 codes + scales, against 3 fp32 matrices


def test_identical_packed_weights_are_stored_once():
    """A weight quantized twice the same way (tied embedding + head) is one tensor in TVM."""
    model = linear_model(2, 32, 32, layers=2)
    second = model.graph.initializers["w1"]
    second.const_value = model.graph.initializers["w0"].const_value
    quantized = _quantized(model, "quantize(bits=4,group=16)")
    compiled = compile_model(quantized)
    assert sum(1 for p in compiled.params if p.dtype == np.uint8) == 1


@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (4, False), (8, True)])
def test_quantized_embedding_and_tied_head_share_one_packed_matrix(bits, symmetric):
    model = linear_model(1, 48, 40, form="tied")
    text = f"quantize(bits={bits},group=16,symmetric={str(symmetric).lower()})"
    quantized = _quantized(model, text)
    assert {n.op_type for n in quantized.graph} == {"GatherBlockQuantized", "MatMulNBits"}
    feeds = {"x": correlated_inputs(1, 48)[None], "ids": np.array([[0, 39, 7, -1]])}
    expected = run_reference(quantized, feeds)
    compiled = compile_model(quantized)
    got = dict(zip(["y", "embedded"], _run_tvm(compiled, feeds), strict=True))
    errors = max_error(got, expected)
    assert max(errors.values()) <= 1e-5, errors
    assert sum(1 for p in compiled.params if p.dtype == np.uint8) == 1  # one set of codes


@pytest.mark.parametrize(
    "activations",
    ["dynamic", "static", "dynamic,granularity=token", "dynamic,granularity=token,smooth=0.5"],
)
def test_w8a8_runs_on_packed_int8_weights(activations):
    from compiler.calibration import Calibration
    from compiler.pass_manager import PassContext

    model = linear_model(16, 64, 64, layers=2)
    feeds = [{"x": correlated_inputs(16, 64, seed=s)[None]} for s in range(2)]
    passes = build_passes(f"quantize(bits=8,group=0,activations={activations})")
    context = PassContext(calibration=Calibration(feeds, "t"))
    quantized = PassManager(passes, context=context).run(model).model
    compiled = compile_model(quantized)
    (got,) = _run_tvm(compiled, feeds[1])
    assert max_error({"y": got}, run_reference(quantized, feeds[1]))["y"] <= 1e-6
    assert [p.dtype for p in compiled.params] == [np.uint8, np.uint8]  # int8 codes, in tiles


def test_cuda_builds_of_quantized_models_name_the_unsupported_node():
    from compiler.errors import BackendError

    quantized = _quantized(linear_model(1, 32, 32), "quantize(bits=4,group=16)")
    with pytest.raises(BackendError, match=r"linear0.*MatMulNBits"):
        compile_model(quantized, "cuda")
