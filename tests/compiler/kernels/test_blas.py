from __future__ import annotations

import numpy as np
import pytest
import tvm

import compiler.kernels  # noqa: F401
from compiler.kernels import MATMUL, MATMUL_NT, blas


def _call(name, a, b, out_shape):
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    tvm.get_global_func(name)(tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
    return out.numpy()


def test_matmul_and_matmul_nt_fill_the_output():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    b = rng.standard_normal((2, 3, 7, 4)).astype(np.float32)
    np.testing.assert_allclose(_call(MATMUL, a, b, (2, 3, 5, 4)), a @ b, rtol=1e-5, atol=1e-5)
    bt = np.ascontiguousarray(np.swapaxes(b, -1, -2))
    np.testing.assert_allclose(_call(MATMUL_NT, a, bt, (2, 3, 5, 4)), a @ b, rtol=1e-5, atol=1e-5)


def test_broadcasting_a_2d_weight():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 6, 8)).astype(np.float32)
    w = rng.standard_normal((8, 3)).astype(np.float32)
    np.testing.assert_allclose(_call(MATMUL, a, w, (4, 6, 3)), a @ w, rtol=1e-5, atol=1e-5)


def test_small_products_run_on_one_blas_thread_and_large_ones_on_all():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 64), np.float32), rng.standard_normal((64, 96), np.float32)
    out = np.empty((1, 96), np.float32)
    blas._product(x, w, out)
    np.testing.assert_allclose(out, x @ w, rtol=1e-5)
    threads = blas._threads
    if threads.default == 1:
        pytest.skip("numpy's BLAS runs on one thread on this machine: nothing to switch")
    assert threads._lib.num_threads == 1
    a, b = rng.standard_normal((256, 512), np.float32), rng.standard_normal((512, 512), np.float32)
    big = np.empty((256, 512), np.float32)
    blas._product(a, b, big)
    assert threads._lib.num_threads == threads.default
    np.testing.assert_allclose(big, a @ b, rtol=1e-4, atol=1e-4)
