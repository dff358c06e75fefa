"""The batched GEMM kernel for products of two activations: results against numpy for register
tiles, column tails, single rows and serial small products, and which products the Relax pass
hands it (the rest go on to the BLAS)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from backends.tvm.activation_matmul import LowerActivationMatmuls
from backends.tvm.batch_gemm_kernels import PARALLEL_MIN_FLOPS, batch_gemm_func
from backends.tvm.target import host_target
from tests.backends.tvm.op_testing import check

pytestmark = pytest.mark.tvm


@pytest.mark.parametrize(
    "shape",
    [
        (12, 128, 64, 128),  # GPT-2's attention scores: full 8 × 32 tiles
        (12, 128, 128, 64),  # … and its context
        (12, 1, 64, 129),  # a decode step's one query row, a 1-column tail
        (3, 13, 7, 50),  # 13 rows: a block and 5 single rows; an 18-column tail
        (2, 9, 5, 3),  # narrower than one tile, serial
        (1, 24, 16, 16),
    ],
)
def test_kernel_matches_numpy(shape):
    batch, m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((batch, m, k)).astype(np.float32)
    b = rng.standard_normal((batch, k, n)).astype(np.float32)
    func = batch_gemm_func(batch, m, k, n).with_attr("global_symbol", "main")
    run = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(host_target()))
    out = tvm.runtime.tensor(np.full((batch, m, n), np.nan, np.float32))
    run["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
    np.testing.assert_allclose(out.numpy(), a @ b, rtol=1e-5, atol=1e-5)
    parallel = "T.parallel" in func.script()
    assert parallel == (batch * m * k * n >= PARALLEL_MIN_FLOPS)


def _lowered(a_shape, b_shape, *, constant_b=False) -> str:
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType(a_shape, "float32"))
    params = [a]
    if constant_b:
        b = relax.const(np.ones([int(d) if isinstance(d, int) else 4 for d in b_shape], "float32"))
    else:
        b = relax.Var("b", relax.TensorType(b_shape, "float32"))
        params.append(b)
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.matmul(a, b)))
        bb.emit_func_output(out)
    return LowerActivationMatmuls()(bb.get()).script()


def test_products_of_two_static_activations_go_to_the_kernel():
    script = _lowered((1, 12, 128, 64), (1, 12, 64, 128))
    assert "batch_gemm_12x128x64x128" in script and "R.matmul" not in script
    assert "batch_gemm_1x5x7x9" in _lowered((5, 7), (7, 9))  # rank 2: one matrix


@pytest.mark.parametrize(
    "a_shape, b_shape, constant_b",
    [
        ((12, 128, 64), (64, 128), True),  # a weight: panels or the BLAS
        ((12, 128, 64), (1, 64, 128), False),  # broadcast batch
        ((tvm.tirx.Var("s", "int64"), 64), (64, 128), False),  # a run-time row count
    ],
)
def test_other_products_are_left_as_they_are(a_shape, b_shape, constant_b):
    script = _lowered(a_shape, b_shape, constant_b=constant_b)
    assert "R.matmul" in script and "batch_gemm" not in script


def test_attention_products_compiled_match_onnxruntime():
    check(
        """
        <ir_version: 10, opset_import: ["" : 21]>
        g (float[2,4,24,16] q, float[2,4,24,16] k, float[2,4,24,16] v) => (float[2,4,24,16] y) {
          kt = Transpose <perm = [0, 1, 3, 2]> (k)
          s = MatMul(q, kt)
          p = Softmax <axis = -1> (s)
          y = MatMul(p, v)
        }
        """,
        rtol=1e-5,
        atol=1e-5,
    )
