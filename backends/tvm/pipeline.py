"""The Relax pipeline per target: TVM's own phases, plus what makes untuned CPU code fast.

``llvm``: GEMMs to the BLAS (:mod:`backends.tvm.blas_offload`), small integer powers to
multiplies (:mod:`backends.tvm.relax_rewrites`), TVM's ``FastMathTransform`` (polynomial
exp/tanh/erf, vectorizable; relative error ~1e-7 on the models tested), then TVM's CPU phases
(library dispatch, legalize + fuse, dataflow lowering, finalize) with our schedule rules
(:mod:`backends.tvm.schedules`) applied to the fused PrimFuncs before lowering.
``cuda`` and others: TVM's default pipeline for the target (dlight GPU rules included).
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax

__all__ = ["PIPELINES", "pipeline_for"]


def _llvm(target: tvm.target.Target) -> tvm.transform.Pass:
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import dlight as dl

    from backends.tvm.blas_offload import OffloadMatmulToBlas
    from backends.tvm.relax_rewrites import SimplifyPower
    from backends.tvm.schedules import cpu_rules

    @tvm.transform.module_pass(opt_level=0, name="CompilerCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                [
                    OffloadMatmulToBlas(),
                    SimplifyPower(),
                    relax.transform.FastMathTransform(),
                    *cpu.library_dispatch_passes(target),
                    *cpu.legalize_passes(target),
                    dl.ApplyDefaultSchedule(*cpu_rules()),
                    *cpu.dataflow_lower_passes(target),
                    *cpu.finalize_passes(target),
                ]
            )
            return seq(mod)

    return _pipeline


PIPELINES: dict[str, Callable[[tvm.target.Target], tvm.transform.Pass]] = {"llvm": _llvm}


def pipeline_for(target: tvm.target.Target) -> tvm.transform.Pass:
    """Our pipeline for ``target``'s kind, else TVM's default one."""
    factory = PIPELINES.get(target.kind.name)
    return factory(target) if factory else relax.get_default_pipeline(target)
