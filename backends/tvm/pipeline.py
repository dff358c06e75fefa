"""The Relax pipeline per target: TVM's own phases, plus what makes untuned CPU code fast.

``llvm``: 16-bit matmuls, convolutions and transcendental ops (exp, softmax, …) in float32,
products of two activations to our batched GEMM kernel (:mod:`backends.tvm.activation_matmul`),
other GEMMs to the BLAS (:mod:`backends.tvm.blas_offload`; products on constant weights arrive
here already as our panel GEMM kernel, :mod:`backends.tvm.panel_gemm`), small integer powers to
multiplies and sigmoids to ``exp`` (:mod:`backends.tvm.relax_rewrites`), TVM's
``FastMathTransform`` (polynomial exp/tanh/erf, vectorizable; relative error ~1e-7 on the models
tested), then TVM's CPU phases (library dispatch, legalize + fuse, dataflow lowering, finalize).
After fusion, empty constants become allocations and kernels follow the run-time shapes they use
(:mod:`backends.tvm.relax_rewrites`). Between fusion and lowering, kernels with records in a
tuning database (``compiler tune``) take their tuned schedules, and the rest get our schedule
rules (:mod:`backends.tvm.schedules`).
``cuda`` and others: TVM's default pipeline for the target (dlight GPU rules included)."""

from __future__ import annotations

import os
from collections.abc import Callable

import tvm
from tvm import relax

__all__ = ["PIPELINES", "cpu_fusion_passes", "pipeline_for"]


def cpu_fusion_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Everything up to fused, unscheduled PrimFuncs: what tuning extracts its tasks from."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from backends.tvm.activation_matmul import LowerActivationMatmuls
    from backends.tvm.blas_offload import OffloadMatmulToBlas
    from backends.tvm.relax_rewrites import (
        AllocateEmptyConstants,
        HalfMathInFloat,
        HalfMatmulInFloat,
        OrderShapeDefinitions,
        SigmoidViaExp,
        SimplifyPower,
    )

    return [
        HalfMatmulInFloat(),
        HalfMathInFloat(),  # before FastMathTransform: its polynomials then run in float32
        LowerActivationMatmuls(),
        OffloadMatmulToBlas(),
        SimplifyPower(),
        SigmoidViaExp(),  # after HalfMathInFloat, before FastMathTransform's exp
        relax.transform.FastMathTransform(),
        *cpu.library_dispatch_passes(target),
        *cpu.legalize_passes(target),
        AllocateEmptyConstants(),  # after legalize_passes' FoldConstant
        OrderShapeDefinitions(),  # after its FuseOps
    ]


def _scheduled(mod: tvm.IRModule) -> int:
    return sum(
        1
        for _, func in mod.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs and "tirx.is_scheduled" in func.attrs
    )


def _count_scheduled(stats: dict, key: str, minus: str | None = None) -> tvm.transform.Pass:
    """Stores the number of scheduled PrimFuncs in ``stats[key]`` (less ``stats[minus]``)."""

    @tvm.transform.module_pass(opt_level=0, name="CountScheduledKernels")
    def count(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        stats[key] = _scheduled(mod) - (stats.get(minus, 0) if minus else 0)
        return mod

    return count


def _llvm(
    target: tvm.target.Target, database: str | os.PathLike | None, stats: dict
) -> tvm.transform.Pass:
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import dlight as dl

    from backends.tvm.schedules import cpu_rules

    @tvm.transform.module_pass(opt_level=0, name="CompilerCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            tuned = []
            if database is not None:  # built under the target: the pass reads it when created
                apply = relax.transform.MetaScheduleApplyDatabase(str(database))
                # Our own kernels (panel GEMM, packed quantized) come scheduled: not "tuned".
                tuned = [
                    _count_scheduled(stats, "own_kernels"),
                    apply,
                    _count_scheduled(stats, "tuned_kernels", minus="own_kernels"),
                ]
            seq = tvm.transform.Sequential(
                [
                    *cpu_fusion_passes(target),
                    *tuned,
                    dl.ApplyDefaultSchedule(*cpu_rules()),
                    *cpu.dataflow_lower_passes(target),
                    *cpu.finalize_passes(target),
                ]
            )
            return seq(mod)

    return _pipeline


PIPELINES: dict[str, Callable[..., tvm.transform.Pass]] = {"llvm": _llvm}


def pipeline_for(
    target: tvm.target.Target,
    *,
    database: str | os.PathLike | None = None,
    stats: dict | None = None,
) -> tvm.transform.Pass:
    """Our pipeline for ``target``'s kind, else TVM's default one.

    ``stats`` (a dict) receives ``tuned_kernels`` when a tuning ``database`` folder is given.
    """
    factory = PIPELINES.get(target.kind.name)
    if factory is None:
        return relax.get_default_pipeline(target)
    return factory(target, database, stats if stats is not None else {})
