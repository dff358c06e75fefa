"""Target policy: which TVM target a name (``llvm``, ``cuda``) means on this host.

TVM 0.27 takes targets as dicts. Its LLVM refuses ``mcpu=native``, so the host CPU is asked from
LLVM itself (``llvm_get_system_cpu``: ``znver4`` on Zen 4, which enables AVX-512) and checked with
``llvm_is_valid_cpu``. CUDA code generation needs no GPU but needs the architecture named.
"""

from __future__ import annotations

import functools
from typing import Any

from compiler.errors import BackendError
from compiler.threads import physical_cores

__all__ = ["DEFAULT_CUDA_ARCH", "host_target", "resolve_target"]

DEFAULT_CUDA_ARCH = "sm_90"  # H100/H200; override with {"kind": "cuda", "arch": ...}


@functools.cache
def _host_llvm() -> tuple[str, str | None]:
    from tvm.target import codegen

    # The wheel's LLVM reports its build triple (x86_64-conda-linux-gnu); the vendor part does
    # not change code generation, so use the plain one the system linker expects.
    triple = str(codegen.llvm_get_system_triple()).replace("-conda-", "-")
    cpu = str(codegen.llvm_get_system_cpu())
    if not cpu or cpu == "generic" or not codegen.llvm_is_valid_cpu(cpu, triple):
        return triple, None
    return triple, cpu


def host_target() -> dict[str, Any]:
    """The LLVM target for this machine's CPU, as a TVM target dict.

    ``num-cores`` (physical cores) is what MetaSchedule parallelizes for; builds and tuning use
    the same target, so tuning records match.
    """
    triple, cpu = _host_llvm()
    target: dict[str, Any] = {"kind": "llvm", "mtriple": triple, "num-cores": physical_cores()}
    if cpu:
        target["mcpu"] = cpu
    return target


def resolve_target(target: str | dict[str, Any]) -> dict[str, Any]:
    """Returns the target dict for ``target``: ``"llvm"``/``"cpu"``, ``"cuda"`` or a dict."""
    if isinstance(target, dict):
        if "kind" not in target:
            raise BackendError(f"target {target!r} has no 'kind'")
        return dict(target)
    name = target.strip().lower()
    if name in ("llvm", "cpu", "host"):
        return host_target()
    if name in ("cuda", "gpu"):
        return {"kind": "cuda", "arch": DEFAULT_CUDA_ARCH, "host": host_target()}
    raise BackendError(f"unknown target {target!r}: use 'llvm' (this CPU) or 'cuda'")
