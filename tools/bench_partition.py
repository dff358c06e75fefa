"""Pipeline partitioning on GPT-2: numerics, stage balance, and micro-batched throughput.

    python tools/bench_partition.py --out tools/results/partition.json

Builds the GPT-2 example (``compiler.examples``, random init from a transformers config) whole
and split into each ``--stages`` count, then measures:

* **numerics**: the partitioned artifact (stages in order, in-process) against the whole one on
  seeded token ids: max relative error ``max|a - b| / max|b|``;
* **balance**: each stage's median time (this process pinned to one core, one TVM and one BLAS
  thread) and ``max / mean``. With ``--refine``, a second build re-partitions using these
  measurements (each node's estimate scaled by its stage's measured/estimated ratio);
* **throughput**: ``--micro-batches`` micro-batches through the stages on 2 worker processes,
  each pinned to its own core, against the same stages on 1 worker process on one core;
  medians of ``--repeats`` interleaved runs.

With ``--tensor K`` it also builds the tensor-parallel artifact (``partition(mode=tensor,
shards=K)``) and measures:

* **numerics**: the artifact in-process, and on ``K`` worker processes (one per shard, each
  pinned to its own core), against the whole artifact: max relative error;
* **latency**: one feed at a time through the ``K`` workers against the whole artifact in this
  process pinned to one core (one thread each: the same compute per process); medians of
  ``--repeats`` × ``--micro-batches`` interleaved runs, and each worker's split of its time
  between computing and exchanging.

``--tensor K`` alone skips the pipeline measurements (give ``--stages`` to run both)::

    python tools/bench_partition.py --tensor 2 --out tools/results/partition_tensor.json

Writes one JSON object (stdout, and ``--out``). Other processes on the machine share the cores:
the JSON records the load average before and after.
"""

from __future__ import annotations

import os

for _name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"  # one thread per process: the workers' setting, for fair stage times

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def refine_profile(artifact: Path, model_path: Path, stage_seconds: list[float]) -> dict:
    """Per-node seconds: each node's roofline estimate × its stage's measured/estimated ratio."""
    import onnx_ir as ir

    from passes.partition import STAGE_KEY
    from passes.partition.pipeline import node_costs

    model = ir.load(artifact / "model.onnx")
    nodes = list(model.graph)
    costs = node_costs(nodes)
    estimated = [0.0] * len(stage_seconds)
    for node, cost in zip(nodes, costs, strict=True):
        estimated[int(node.metadata_props[STAGE_KEY])] += cost
    return {
        node.name: float(cost)
        * stage_seconds[int(node.metadata_props[STAGE_KEY])]
        / max(estimated[int(node.metadata_props[STAGE_KEY])], 1e-30)
        for node, cost in zip(nodes, costs, strict=True)
    }


def measure_tensor(args, onnx_path: Path, work: Path, feeds, expected, cores, build_seconds):
    """The tensor-parallel artifact: errors in-process and on workers, latency vs one process."""
    import compiler.runtime
    from compiler.builder import build
    from compiler.tensor_parallel import ShardWorkers

    shards = args.tensor
    if len(cores) < shards:
        raise SystemExit(f"--tensor {shards} needs {shards} cores")
    directory = work / f"tensor{shards}"
    t0 = time.perf_counter()
    passes = f"cleanup,partition(mode=tensor,shards={shards})"
    if not (args.reuse and (directory / "manifest.json").exists()):
        build(onnx_path, directory, passes=passes, latency_runs=0)
        build_seconds[f"tensor{shards}"] = time.perf_counter() - t0
        log(f"built {shards} shards in {build_seconds[f'tensor{shards}']:.0f} s")
    plan = json.loads((directory / "report.json").read_text())["partition"]
    entry: dict = {
        "shards": shards,
        "groups": len(plan["groups"]),
        "segments": len(plan["segments"]),
        "group_kinds": {
            k: [g["kind"] for g in plan["groups"]].count(k)
            for k in sorted({g["kind"] for g in plan["groups"]})
        },
        "replicated_matmuls": plan["replicated_matmuls"],
        "exchange_bytes_per_run": plan["exchange_bytes"],
        "flops": plan["flops"],
    }
    sharded = compiler.runtime.load(directory)
    entry["in_process_max_relative_error"] = max(
        relative_error(sharded(f)["logits"], e) for f, e in zip(feeds, expected, strict=False)
    )
    del sharded
    whole = compiler.runtime.load(work / "whole")
    with ShardWorkers(directory, cores=cores[:shards]) as workers:
        outputs = workers.run_many(feeds[: len(expected)])
        entry["workers_max_relative_error"] = max(
            relative_error(o["logits"], e) for o, e in zip(outputs, expected, strict=True)
        )
        log(
            f"tensor parallel: errors {entry['in_process_max_relative_error']:.2e} (in-process), "
            f"{entry['workers_max_relative_error']:.2e} ({shards} workers)"
        )
        workers(feeds[0])
        whole(feeds[0])
        seconds: dict[str, list[float]] = {"one_process": [], f"{shards}_workers": []}
        timings = []
        try:
            for _ in range(args.repeats):  # interleaved, one feed at a time
                for f in feeds:
                    os.sched_setaffinity(0, {cores[0]})  # the single process: one core
                    t0 = time.perf_counter()
                    whole(f)
                    seconds["one_process"].append(time.perf_counter() - t0)
                    os.sched_setaffinity(0, set(cores))  # the driver mostly waits: any core
                    t0 = time.perf_counter()
                    workers(f)
                    seconds[f"{shards}_workers"].append(time.perf_counter() - t0)
                    timings.append(workers.timings[0])
        finally:
            os.sched_setaffinity(0, set(cores))
    entry["latency_ms"] = {
        k: {"median": 1e3 * float(np.median(v)), "min": 1e3 * float(np.min(v)), "runs": len(v)}
        for k, v in seconds.items()
    }
    entry["speedup"] = float(
        np.median(seconds["one_process"]) / np.median(seconds[f"{shards}_workers"])
    )
    entry["worker_ms"] = [
        {k: 1e3 * float(np.median([t[w][k] for t in timings])) for k in ("compute_s", "exchange_s")}
        for w in range(shards)
    ]
    log(
        f"tensor parallel: {entry['latency_ms']} speedup {entry['speedup']:.2f}x, "
        f"per worker {entry['worker_ms']}"
    )
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--stages", default=None, help="stage counts (default 2,4)")
    parser.add_argument("--tensor", type=int, default=0, help="shards of a tensor-parallel build")
    parser.add_argument("--micro-batches", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stage-runs", type=int, default=9)
    parser.add_argument("--refine", action="store_true", help="re-partition on measured times")
    parser.add_argument("--work", default="/tmp/bench_partition")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the exported model, the whole and the tensor-parallel builds in --work",
    )
    parser.add_argument("--out")
    args = parser.parse_args()

    import compiler.runtime
    from compiler.builder import build
    from compiler.examples import export_onnx
    from compiler.stages import ProcessPipeline

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = {
        "layers": args.layers,
        "hidden": args.hidden,
        "heads": args.heads,
        "vocab": args.vocab,
        "seq": args.seq,
    }
    onnx_path = work / "gpt2.onnx"
    t0 = time.perf_counter()
    if not (args.reuse and onnx_path.exists()):
        export_onnx("gpt2", onnx_path, **config)
        log(f"exported GPT-2 {config} in {time.perf_counter() - t0:.0f} s")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("needs 2 cores")
    t0 = time.perf_counter()
    build_seconds = {}
    if not (args.reuse and (work / "whole" / "manifest.json").exists()):
        build(onnx_path, work / "whole", latency_runs=0)
        build_seconds["whole"] = time.perf_counter() - t0
        log(f"built the whole model in {build_seconds['whole']:.0f} s")
    whole = compiler.runtime.load(work / "whole")
    rng = np.random.default_rng(0)
    feeds = [
        {"input_ids": rng.integers(0, args.vocab, (1, args.seq)).astype(np.int64)}
        for _ in range(args.micro_batches)
    ]
    expected = [whole(f)["logits"] for f in feeds[:4]]
    del whole

    result = {
        "model": {"name": "gpt2", **config},
        "machine": {"cores": cores, "loadavg_before": os.getloadavg()},
        "threads_per_process": 1,
        "stages": {},
    }
    if args.stages is None:
        args.stages = "" if args.tensor else "2,4"
    for count in [int(c) for c in args.stages.split(",") if c]:
        entry: dict = {}
        passes = f"cleanup,partition(stages={count})"
        t0 = time.perf_counter()
        built = build(onnx_path, work / f"stages{count}", passes=passes, latency_runs=0)
        build_seconds[f"stages{count}"] = time.perf_counter() - t0
        log(f"built {count} stages in {build_seconds[f'stages{count}']:.0f} s")
        staged_dir = work / f"stages{count}"

        def measure(directory: Path) -> tuple[list[float], float]:
            staged = compiler.runtime.load(directory)
            error = max(
                relative_error(staged(f)["logits"], e)
                for f, e in zip(feeds[:4], expected, strict=False)
            )
            os.sched_setaffinity(0, {cores[0]})
            try:
                seconds = staged.profile(feeds[0], runs=args.stage_runs)
            finally:
                os.sched_setaffinity(0, set(cores))
            return seconds, error

        seconds, error = measure(staged_dir)
        entry["max_relative_error"] = error
        entry["estimated_stage_seconds"] = [
            s["estimated_seconds"] for s in built.manifest["stages"]
        ]
        entry["crossing_bytes"] = built.report["partition"]["crossing_bytes"]
        entry["stage_seconds"] = seconds
        entry["max_over_mean"] = max(seconds) / float(np.mean(seconds))
        log(
            f"{count} stages: error {error:.2e}, stage times {seconds}, max/mean "
            f"{entry['max_over_mean']:.3f}"
        )
        if args.refine:
            profile = work / f"profile{count}.json"
            profile.write_text(json.dumps(refine_profile(staged_dir, onnx_path, seconds)))
            refined_dir = work / f"stages{count}-refined"
            t0 = time.perf_counter()
            build(
                onnx_path,
                refined_dir,
                passes=f"cleanup,partition(stages={count},profile='{profile}')",
                latency_runs=0,
            )
            build_seconds[f"stages{count}-refined"] = time.perf_counter() - t0
            seconds, error = measure(refined_dir)
            entry["refined"] = {
                "max_relative_error": error,
                "stage_seconds": seconds,
                "max_over_mean": max(seconds) / float(np.mean(seconds)),
            }
            log(
                f"{count} stages refined: stage times {seconds}, max/mean "
                f"{entry['refined']['max_over_mean']:.3f}"
            )
            if entry["refined"]["max_over_mean"] < entry["max_over_mean"]:
                staged_dir = refined_dir
        entry["throughput_artifact"] = staged_dir.name

        # Throughput: the same stages on 1 worker (one core) and on 2 workers (a core each).
        with (
            ProcessPipeline(staged_dir, workers=1, cores=[cores[0]]) as one,
            ProcessPipeline(staged_dir, workers=2, cores=cores[:2]) as two,
        ):
            one.run_many(feeds[:2])
            two.run_many(feeds[:4])
            rates: dict[str, list[float]] = {"one_process": [], "two_processes": []}
            for _ in range(args.repeats):  # interleaved
                for name, pipeline in (("one_process", one), ("two_processes", two)):
                    t0 = time.perf_counter()
                    outputs = pipeline.run_many(feeds)
                    rates[name].append(len(feeds) / (time.perf_counter() - t0))
            check = max(
                relative_error(o["logits"], e) for o, e in zip(outputs, expected, strict=False)
            )
        entry["throughput_micro_batches_per_s"] = {
            k: {"median": float(np.median(v)), "runs": v} for k, v in rates.items()
        }
        entry["speedup"] = float(
            np.median(rates["two_processes"]) / np.median(rates["one_process"])
        )
        entry["pipelined_max_relative_error"] = check
        log(f"{count} stages: speedup {entry['speedup']:.2f}x ({rates})")
        result["stages"][str(count)] = entry
    if args.tensor:
        result["tensor"] = measure_tensor(
            args, onnx_path, work, feeds, expected, cores, build_seconds
        )
    result["build_seconds"] = build_seconds
    result["machine"]["loadavg_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
