"""MetaSchedule tuning of the kernels TVM compiles, into a reusable JSON database.

Tasks are the fused PrimFuncs our CPU pipeline leaves for TVM to schedule (GEMMs on constant
weights run our panel kernel and other GEMMs the BLAS: neither is tuned), extracted after
:func:`backends.tvm.pipeline.cpu_fusion_passes`, so they are exactly what ``build`` compiles.
Records live in MetaSchedule's ``JSONDatabase`` (``database_workload.json``
+ ``database_tuning_record.json``), keyed by the structural hash of each kernel: records tuned
on one model serve any other model with the same kernel shapes.

Tuning goes task by task (heaviest first) under a wall-clock budget and is resumable: a task
whose workload already has records is skipped, so an interrupted or repeated run continues.

Our schedule rules (:mod:`backends.tvm.schedules`) compete with the search: after a task is
tuned (or found tuned), the kernel they make is measured by the same builder and runner and
committed as one more record, so a build takes whichever ran faster. On GPT-2 the search's GELU
measured 2,088 µs against the rules' 154 µs, and a tuned build had come out slower than an
untuned one. ``rules.json`` in the database folder remembers which workloads have their rules'
record (µs, or null where no rule applies or it failed to run) and for which version of the
rules (:func:`rules_version`, a digest of their source): when the rules change, the next tune
run measures and commits their kernels again. The old rules' records stay in the database —
valid schedules that win only where they measured faster.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx_ir as ir

from backends.tvm.compile import import_relax
from backends.tvm.target import resolve_target
from compiler.artifact import write_json
from compiler.errors import BackendError

__all__ = ["TuneResult", "open_database", "rules_version", "tune_model"]

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def _own(task) -> bool:
    """Whether ``task``'s kernel is one of ours (scheduled already, see the module doc)."""
    func = task.dispatched[0]["main"]
    return bool(func.attrs) and "tirx.is_scheduled" in func.attrs


def open_database(path: str | os.PathLike) -> str:
    """Checks that ``path`` is a tuning database folder; returns it as a string."""
    folder = Path(path)
    if not (folder / WORKLOADS).is_file() or not (folder / RECORDS).is_file():
        raise BackendError(
            f"{folder}: not a tuning database ({WORKLOADS} and {RECORDS} expected; "
            "create one with `python -m compiler tune MODEL --db DIR`)"
        )
    return str(folder)


@dataclasses.dataclass
class TuneResult:
    """What a tuning run did: tasks seen, tuned now, skipped (already tuned), time spent."""

    tasks: int
    tuned: list[str]
    skipped: list[str]
    seconds: float
    best_us: dict[str, float]  # the best record per task, the rules' kernel included
    rules_us: dict[str, float]  # our schedule rules' kernel per task (see the module doc)
    stopped_by_budget: bool
    runner: str = "local"  # where candidates were measured: local, or rpc://TRACKER (workers)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _best_us(database, workload_mod) -> float | None:
    if not database.has_workload(workload_mod):
        return None
    records = database.get_top_k(database.commit_workload(workload_mod), 1)
    if not records or not records[0].run_secs:
        return None
    secs = [float(s) for s in records[0].run_secs]
    return sum(secs) / len(secs) * 1e6


RULES = "rules.json"


def rules_version() -> str:
    """A digest of :mod:`backends.tvm.schedules`' source: changes when the rules do."""
    import hashlib

    from backends.tvm import schedules

    return hashlib.sha256(Path(schedules.__file__).read_bytes()).hexdigest()[:16]


def _read_rules(path: Path, version: str) -> dict[str, float | None]:
    """The workloads' rules records of ``rules.json`` if made by rules ``version``, else {}."""
    if not path.is_file():
        return {}
    stored = json.loads(path.read_text())
    if stored.get("version") != version:
        return {}
    return dict(stored.get("records", {}))


def _commit_rules_record(database, workload, target, runner) -> float | None:
    """Measures the kernel our schedule rules make for ``workload`` (an IRModule with one
    PrimFunc, ``main``) and commits it to ``database`` as a tuning record; its mean µs, or None
    when no rule applies or it fails to build or run."""
    from tvm.s_tir import meta_schedule as ms

    from backends.tvm.schedules import cpu_rules

    func = workload["main"]
    sch = None
    for rule in cpu_rules():
        sch = rule.apply(func, target, False)
        if sch is not None:
            break
    if sch is None or sch.trace is None:
        return None
    args = ms.arg_info.ArgInfo.from_prim_func(func)
    (built,) = ms.builder.LocalBuilder(timeout_sec=120).build(
        [ms.builder.BuilderInput(sch.mod, target)]
    )
    if built.error_msg is not None:
        return None
    (future,) = (runner or ms.runner.LocalRunner()).run(
        [ms.runner.RunnerInput(built.artifact_path, "cpu", args)]
    )
    result = future.result()
    if result.error_msg is not None or not result.run_secs:
        return None
    database.commit_tuning_record(
        ms.database.TuningRecord(
            sch.trace, database.commit_workload(workload), result.run_secs, target, args
        )
    )
    secs = [float(s) for s in result.run_secs]
    return sum(secs) / len(secs) * 1e6


def tune_model(
    model: ir.Model,
    db_dir: str | os.PathLike,
    *,
    target: str | dict[str, Any] = "llvm",
    budget_s: float = 1800.0,
    trials_per_task: int = 64,
    progress: Callable[[str, int, int, float | None], None] | None = None,
    rpc: tuple[str, int] | None = None,
    key: str | None = None,
    rpc_workers: int = 1,
) -> TuneResult:
    """Tunes the kernels of ``model`` into the database at ``db_dir`` (created if missing).

    ``progress(task_name, index, total, best_us)`` is called after each task. With ``rpc`` (a
    TVM RPC tracker) and ``key``, candidates are measured on the workers registered there
    (``python -m compiler serve-worker --tracker``), ``rpc_workers`` at a time, through
    MetaSchedule's ``RPCRunner``; the records land in the same database.
    """
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from backends.tvm.pipeline import cpu_fusion_passes

    start = time.perf_counter()
    target_dict = resolve_target(target)
    if target_dict["kind"] != "llvm":
        raise BackendError(f"tuning supports the llvm target for now, not {target_dict['kind']}")
    tvm_target = tvm.target.Target(target_dict)
    imported = import_relax(model)
    with tvm_target:
        mod = tvm.transform.Sequential(cpu_fusion_passes(tvm_target))(imported.mod)
    # Our own kernels (panel GEMM, packed quantized) come scheduled: nothing to tune there.
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, tvm_target) if not _own(t)]
    tasks = sorted(tasks, key=lambda t: -float(t.weight))
    db_dir = Path(db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(db_dir))
    tuned, skipped, best, rules_us = [], [], {}, {}
    rules_file = db_dir / RULES
    version = rules_version()  # hashed once: every task rewrites rules.json
    measured_rules = _read_rules(rules_file, version)
    stopped = False
    runner = None
    if rpc is not None:
        from compiler.rpc import metaschedule_session

        if not key:
            raise BackendError("tuning over RPC needs the workers' key (--key)")
        config = ms.runner.RPCConfig(
            tracker_host=rpc[0], tracker_port=rpc[1], tracker_key=key, session_timeout_sec=120
        )
        # The key travels in tracker_key to our session factory only; the tracker sees a label.
        runner = ms.runner.RPCRunner(
            rpc_config=config, f_create_session=metaschedule_session, max_workers=rpc_workers
        )
    for index, task in enumerate(tasks):
        workload = task.dispatched[0]
        existing = _best_us(database, workload)
        if existing is not None:
            skipped.append(task.task_name)
            best[task.task_name] = existing
        elif time.perf_counter() - start >= budget_s:
            stopped = True
            break
        else:
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                extracted_tasks=[task], work_dir=str(db_dir)
            )
            ms.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=str(db_dir),
                max_trials_global=trials_per_task,
                max_trials_per_task=trials_per_task,
                num_trials_per_iter=min(trials_per_task, 32),
                database=database,
                builder=ms.builder.LocalBuilder(timeout_sec=120),
                **({"runner": runner} if runner is not None else {}),
            )
            tuned.append(task.task_name)
            measured = _best_us(database, workload)
            if measured is not None:
                best[task.task_name] = measured
        key = str(tvm_ffi.structural_hash(workload))
        if key not in measured_rules:
            measured_rules[key] = _commit_rules_record(database, workload, tvm_target, runner)
            write_json(rules_file, {"version": version, "records": measured_rules})
        if measured_rules[key] is not None:
            rules_us[task.task_name] = measured_rules[key]
            best[task.task_name] = min(best.get(task.task_name, math.inf), measured_rules[key])
        if progress is not None:
            progress(task.task_name, index + 1, len(tasks), best.get(task.task_name))
    return TuneResult(
        tasks=len(tasks),
        tuned=tuned,
        skipped=skipped,
        seconds=time.perf_counter() - start,
        best_us=best,
        rules_us=rules_us,
        stopped_by_budget=stopped,
        runner=f"rpc://{rpc[0]}:{rpc[1]}" if rpc is not None else "local",
    )
