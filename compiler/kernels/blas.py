"""GEMM through numpy's BLAS, exposed to compiled code as TVM packed functions.

Both are destination-passing: ``out`` is preallocated by the TVM VM and filled in place.

**BLAS threads.** A small product — few rows (a decode step's GEMV) or few FLOPs per matrix
(attention scores per head) — runs on one BLAS thread, larger ones on the BLAS's default
count. A GEMV is bound by memory (one core reads ~25 GB/s here, near the machine's bandwidth),
and OpenBLAS's extra threads spin for a while after each call, taking the cores that TVM's own
kernels between the GEMMs need: a GPT-2 decode step measured a 511 ms median with two BLAS
threads on a lightly loaded machine, 37 ms with one. The count is switched through
``threadpoolctl`` (about 1 µs, and only when it changes).

* ``compiler.blas.matmul(a, b, out)``: ``out = a @ b``
* ``compiler.blas.matmul_nt(a, b, out)``: ``out = a @ swapaxes(b, -1, -2)`` — for weights stored
  transposed (ONNX ``Gemm(transB=1)``, tied embeddings): numpy hands BLAS the transposed view,
  so no transposed copy of the weight is ever made.
"""

from __future__ import annotations

import numpy as np

MATMUL = "compiler.blas.matmul"
MATMUL_NT = "compiler.blas.matmul_nt"

_registered = False


# One BLAS thread at or below either bound (see the module doc).
SMALL_ROWS = 8
SMALL_FLOPS = 1 << 23


class _BlasThreads:
    """Sets numpy's BLAS thread count, remembering the current one so unchanged calls are free."""

    def __init__(self) -> None:
        from threadpoolctl import ThreadpoolController

        blas = ThreadpoolController().select(user_api="blas").lib_controllers
        # numpy's own BLAS (torch may have loaded another); none: nothing to switch
        ours = [lib for lib in blas if "numpy" in lib.filepath] or blas
        self._lib = ours[0] if ours else None
        self.default = self._lib.num_threads if self._lib is not None else 1
        self._current = self.default

    def use(self, count: int) -> None:
        if self._lib is not None and count != self._current:
            self._lib.set_num_threads(count)
            self._current = count


_threads: _BlasThreads | None = None


def _product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    global _threads
    if _threads is None:
        _threads = _BlasThreads()
    rows, inner, cols = a.shape[-2], a.shape[-1], b.shape[-1]
    small = rows <= SMALL_ROWS or 2 * rows * inner * cols <= SMALL_FLOPS
    _threads.use(1 if small else _threads.default)
    np.matmul(a, b, out=out)


def matmul(a, b, out) -> None:
    _product(np.from_dlpack(a), np.from_dlpack(b), np.from_dlpack(out))


def matmul_nt(a, b, out) -> None:
    _product(np.from_dlpack(a), np.swapaxes(np.from_dlpack(b), -1, -2), np.from_dlpack(out))


def register() -> None:
    """Registers the kernels with TVM's FFI once per process (idempotent)."""
    global _registered
    if _registered:
        return
    import tvm_ffi

    tvm_ffi.register_global_func(MATMUL, matmul, override=True)
    tvm_ffi.register_global_func(MATMUL_NT, matmul_nt, override=True)
    _registered = True
