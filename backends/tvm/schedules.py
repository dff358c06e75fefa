"""CPU schedule rules (dlight style) for what TVM's default CPU pipeline leaves unscheduled.

TVM's CPU build runs every kernel as single-threaded scalar loops. These rules apply to the
PrimFuncs left after ``LegalizeOps``/``FuseOps``/``FuseTIR`` (GEMMs are already offloaded to the
BLAS, see :mod:`backends.tvm.blas_offload`), in this order, first match wins:

* :class:`Reduction` — row-wise fused reductions (softmax, LayerNorm, RMSNorm): rows in
  parallel, every block computed per row, and each reduction over the last axis accumulated in
  ``lanes`` partial results at once (``rfactor``: ``p[j] ⊕= x[lanes·o + j]``, then ``⊕_j p[j]``)
  so its loads and adds are vectors. TVM's ``dl.cpu.Reduction`` keeps one scalar chain per row
  (its docstring: ``rfactor`` clashes with ``compute_at``, which is why the partials are factored
  out *before* the blocks move under the row loop here): GPT-2's LayerNorm over 128 × 768 took
  200 µs that way, 31–41 µs this way, and an RMSNorm 120 µs against 42–49 µs (2 threads).
  Kernels it cannot factor go to TVM's rule. Guarded: when every reduction has a single output
  row (a decode step's LayerNorm over [1, 1, 768]), TVM's rule parallelizes the *normalized*
  axis and recomputes the reduction for every element (1.2 ms instead of microseconds); such
  kernels, and reductions of fewer than ``SERIAL_MAX_REDUCTION_WORK`` iterations in all, are
  left serial;
* :class:`Injective`: elementwise/broadcast/transpose chains — producers inlined, all loops fused,
  the innermost ``lanes`` (vector width / element bits) vectorized, the rest parallel over cores;
  a kernel with several such output blocks (a ``Split``) gets this for each;
* :class:`ReductionFallback`: any other kernel with leading spatial loops — those are fused and
  run in parallel (the reduction itself stays serial per output element).

Kernels smaller than ``PARALLEL_MIN_ELEMENTS`` stay on one thread: waking the pool costs more.
"""

from __future__ import annotations

from tvm import ir, s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import get_extent, try_inline
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.s_tir.schedule.schedule import ScheduleError
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width
from tvm.tirx.analysis import undefined_vars

__all__ = ["PARALLEL_MIN_ELEMENTS", "Injective", "Reduction", "ReductionFallback", "cpu_rules"]

PARALLEL_MIN_ELEMENTS = 4096
# Reductions with fewer loop iterations than this run on one thread: a decode step's softmax
# over 12 heads × 129 positions took 36 µs in parallel (pool wake-up), 5 µs serial; the demo
# model's LayerNorm over 32 × 256, 26 µs → 16 µs. Prefill's (128 × 768 and up) stay parallel.
SERIAL_MAX_REDUCTION_WORK = 16 * PARALLEL_MIN_ELEMENTS


def _lanes(sch: s_tir.Schedule, block, target: Target) -> int:
    stmt = sch.get(block)
    bits = stmt.writes[0].source.dtype.bits if stmt.writes else 32
    width = llvm_get_vector_width(target)
    return max((width if width > 0 else 128) // max(bits, 8), 1)


def _spatial_size(info) -> int | None:
    size = 1
    for it in info.iters:
        if it.kind == "S":
            if not isinstance(it.dom, int):
                return None
            size *= it.dom
    return size


def _iterations(infos) -> int | None:
    """Loop iterations over all blocks (spatial × reduce), or None if any extent is symbolic."""
    total = 0
    for info in infos:
        size = 1
        for it in info.iters:
            if not isinstance(it.dom, int):
                return None
            size *= it.dom
        total += size
    return total


def _has_empty_loop(sch: s_tir.Schedule, loops) -> bool:
    """A loop of extent 0 (an empty slice or split part): fusing it divides by zero in TVM."""
    return any(get_extent(sch, loop) == 0 for loop in loops)


class Reduction(CPUScheduleRule):
    """TVM's CPU reduction rule, refused for kernels whose reductions produce one row only."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        from tvm.s_tir import dlight as dl

        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        infos = normalize_prim_func(s_tir.Schedule(func))
        if infos is None:
            return None
        reductions = [info for info in infos if not info.is_injective()]
        if reductions and all(_spatial_size(info) == 1 for info in reductions):
            return None
        work = _iterations(infos)
        if reductions and work is not None and work < SERIAL_MAX_REDUCTION_WORK:
            return s_tir.Schedule(func)  # small: one thread, as it is
        try:
            vectorized = _row_reduction(func, target)
        except ScheduleError:  # a reduction rfactor cannot split (argmax's two outputs)
            vectorized = None
        if vectorized is not None:
            return vectorized
        try:
            return dl.cpu.Reduction().apply(func, target, tunable)
        except Exception:
            # TVM's rule raises instead of declining on some multi-output kernels (an average
            # pool fused with a Dropout mask's full_like: "... is an output block", Inception
            # v1); declining lets the next rule schedule the kernel.
            return None


def _leading_spatial(kind: str) -> int:
    return len(kind) - len(kind.lstrip("S"))


def _vectorize_last(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Splits ``block``'s innermost loop by ``lanes`` and vectorizes the inner part."""
    loops = sch.get_loops(block)
    extent = get_extent(sch, loops[-1]) if loops else 1
    if isinstance(extent, int) and extent <= lanes:
        if extent >= 2 and len(loops) > 1:
            sch.vectorize(loops[-1])
        return
    _, inner = sch.split(loops[-1], factors=[None, lanes])
    sch.vectorize(inner)


def _row_reduction(func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
    """The vector-partials schedule of :class:`Reduction`, or None when it does not apply.

    Preconditions (else None): two blocks or more, the last injective, at least one reduction
    whose only reduce axis is its last loop with a static extent of ``2 · lanes`` or more
    divisible by ``lanes``, every block starting with spatial axes (the rows), and the last
    block having axes past them (the columns).
    """
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None or len(infos) < 2 or not infos[-1].is_injective():
        return None
    kinds = [info.dom_kind() for info in infos]
    rows = min(_leading_spatial(kind) for kind in kinds)
    if rows == 0 or len(kinds[-1]) <= rows:  # the last block must have columns past the rows
        return None
    lanes = _lanes(sch, infos[-1].block_rv, target)
    partials = []
    for info, kind in zip(infos, kinds, strict=True):
        if info.is_injective() or kind.count("R") != 1 or kind[-1] != "R":
            continue
        loops = sch.get_loops(info.block_rv)
        extent = get_extent(sch, loops[-1])
        if not isinstance(extent, int) or extent % lanes or extent < 2 * lanes:
            continue
        _, inner = sch.split(loops[-1], factors=[None, lanes])
        rank = len(sch.get(info.block_rv).writes[0].source.shape)
        partials.append(sch.rfactor(inner, factor_axis=rank))  # partials[..., j], j last
    if not partials:
        return None
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    loops = sch.get_loops(blocks[-1])
    spatial = sch.fuse(*loops[:rows]) if rows > 1 else loops[0]
    sch.parallel(spatial)
    _vectorize_last(sch, blocks[-1], lanes)
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, spatial, preserve_unit_loops=True)
    partial_names = {sch.get(p).name_hint for p in partials}
    for block in blocks[:-1]:
        stmt = sch.get(block)
        if stmt.name_hint in partial_names:
            # under the row loop: (j, unit row loops…, o); o outside, j inside as a vector
            loops = sch.get_loops(block)[1:]
            if get_extent(sch, loops[0]) != lanes:
                return None
            sch.reorder(loops[-1], loops[0])
            sch.vectorize(loops[0])
        elif all(iv.iter_type == tirx.IterVar.DataPar for iv in stmt.iter_vars):
            _vectorize_last(sch, block, lanes)
        # else: a reduction left scalar (the sum of the partials, or one that was not split)
    return sch


class Injective(CPUScheduleRule):
    """Fuses, vectorizes and parallelizes each block of a kernel that is injective blocks only
    after inlining: one block, or several outputs computed side by side (a ``Split`` — GPT-2's
    QKV split took 160 µs as TVM's serial scalar loops, ~30 µs scheduled)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or any(sch.get(info.block_rv).init is not None for info in infos):
            # A reduction whose reduce loops all have extent 1 (a depthwise conv1d with kernel
            # 1) looks injective after normalization, and inlining its consumer into it adds
            # the consumer's terms in the init *and* the update: a bias counted twice.
            return None
        infos = try_inline(sch, infos)
        if not infos or not all(info.is_injective() for info in infos):
            return None
        for info in infos:
            loops = sch.get_loops(info.block_rv)
            if not loops or _has_empty_loop(sch, loops):
                return None
        for info in infos:
            _schedule_injective(sch, info.block_rv, target)
        return sch


def _schedule_injective(sch: s_tir.Schedule, block, target: Target) -> None:
    """All loops of an injective ``block`` fused; the innermost ``lanes`` vectorized, the rest
    parallel when there are ``PARALLEL_MIN_ELEMENTS`` elements or more."""
    loops = sch.get_loops(block)
    lanes = _lanes(sch, block, target)
    # A select (concat, pad) whose condition changes inside a vector miscompiles in TVM's
    # vectorizer: a rotary embedding's concat of 4-wide halves in 16 lanes gave NaN. Such
    # kernels vectorize only a last axis the conditions do not read (a KV cache's concat
    # along the sequence, rows of head_dim), else run scalar (found by tools/conformance.py,
    # test_rotary_embedding_3d_input).
    if "if_then_else" in str(sch.get(block)):
        _vectorize_free_last_axis(sch, block, loops, lanes)
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = get_extent(sch, fused)
    if not isinstance(extent, int):
        sch.parallel(fused)
    elif extent % lanes == 0 and extent >= 2 * lanes:
        outer, inner = sch.split(fused, factors=[None, lanes])
        sch.vectorize(inner)
        if extent >= PARALLEL_MIN_ELEMENTS:
            sch.parallel(outer)
    elif extent >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(fused)


def _conditions(expr) -> list:
    """The conditions of every ``if_then_else`` in ``expr`` (a walk over its operands)."""
    found = []
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, ir.Call):
            if isinstance(node.op, ir.Op) and node.op.name.endswith("if_then_else"):
                found.append(node.args[0])
            stack.extend(node.args)
            continue
        for field in ("a", "b", "value", "condition", "true_value", "false_value"):
            child = getattr(node, field, None)
            if isinstance(child, ir.expr.Expr):
                stack.append(child)
        stack.extend(getattr(node, "indices", None) or [])
    return found


def _conditions_read(stmt, var: tirx.Var) -> bool:
    """Whether a select condition in the block ``stmt`` (a single store) reads ``var``; True
    when the body is not one store (nothing known, so nothing assumed)."""
    body = stmt.body
    if not isinstance(body, tirx.BufferStore):
        return True
    conditions = _conditions(body.value)
    return any(any(v.same_as(var) for v in undefined_vars(c)) for c in conditions)


def _vectorize_free_last_axis(sch: s_tir.Schedule, block, loops, lanes: int):
    """A select kernel: the loops but the last fused and parallel; the last vectorized when no
    condition reads it and ``lanes`` divides it (``normalize_prim_func`` has bound the block's
    iteration variables to the loops one to one, in order, so the last loop is the last one).
    """
    stmt = sch.get(block)
    last = get_extent(sch, loops[-1])
    outer = loops[:-1]
    free = (
        len(loops) > 1
        and isinstance(last, int)
        and last % lanes == 0
        and not _conditions_read(stmt, stmt.iter_vars[-1].var)
    )
    if not free:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = get_extent(sch, fused)
        if not isinstance(extent, int) or extent >= PARALLEL_MIN_ELEMENTS:
            sch.parallel(fused)
        return sch
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    _, inner = sch.split(loops[-1], factors=[None, lanes])
    sch.vectorize(inner)
    extent = get_extent(sch, fused)
    if not isinstance(extent, int) or extent * last >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(fused)
    return sch


class ReductionFallback(CPUScheduleRule):
    """Runs the leading spatial loops of a single-block kernel in parallel."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or len(infos) != 1:
            return None
        kinds = infos[0].dom_kind()
        leading = len(kinds) - len(kinds.lstrip("S"))
        if leading == 0:
            return None
        loops = sch.get_loops(infos[0].block_rv)[:leading]
        if _has_empty_loop(sch, loops):
            return None
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = get_extent(sch, fused)
        if isinstance(extent, int) and extent < 2:
            return None
        sch.parallel(fused)
        return sch


def cpu_rules() -> list[CPUScheduleRule]:
    """The rules in the order they are tried."""
    return [Reduction(), Injective(), ReductionFallback()]
