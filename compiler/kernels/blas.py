"""GEMM through numpy's BLAS, exposed to compiled code as TVM packed functions.

Both are destination-passing: ``out`` is preallocated by the TVM VM and filled in place.

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


def matmul(a, b, out) -> None:
    np.matmul(np.from_dlpack(a), np.from_dlpack(b), out=np.from_dlpack(out))


def matmul_nt(a, b, out) -> None:
    np.matmul(np.from_dlpack(a), np.swapaxes(np.from_dlpack(b), -1, -2), out=np.from_dlpack(out))


def register() -> None:
    """Registers the kernels with TVM's FFI once per process (idempotent)."""
    global _registered
    if _registered:
        return
    import tvm_ffi

    tvm_ffi.register_global_func(MATMUL, matmul, override=True)
    tvm_ffi.register_global_func(MATMUL_NT, matmul_nt, override=True)
    _registered = True
