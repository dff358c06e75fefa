"""Host kernels that compiled artifacts call by name (TVM packed functions).

Registered as TVM FFI global functions when this package is imported; ``compiler.runtime``
imports it before running an artifact. Each is called in destination-passing style: inputs first,
then the preallocated output, all as DLPack tensors viewed as numpy arrays without copies.

* ``compiler.blas.matmul(a, b, out)``: ``out = a @ b`` for float32 tensors of rank ≥ 2 with numpy
  broadcasting of batch dims — numpy hands the GEMMs to its BLAS (OpenBLAS, multithreaded,
  AVX-512 kernels on this CPU), about 160 GFLOP/s here against ~1 GFLOP/s for TVM's unscheduled
  loops (see ``tools/bench``);
* ``compiler.blas.matmul_nt(a, b, out)``: ``out = a @ swapaxes(b, -1, -2)``, for weights stored
  transposed, without a transposed copy.
"""

from __future__ import annotations

from compiler.kernels.blas import MATMUL, MATMUL_NT, register

__all__ = ["MATMUL", "MATMUL_NT", "register"]

register()
