"""Side-by-side latency: our artifact against onnxruntime (and torch eager), in one process.

Method (DESIGN.md §6): warm-up runs first, then the runtimes are timed interleaved — ours, peer,
ours, peer … — so drift on this noisy machine hits all of them alike; medians of ``runs`` each
and their ratios are reported, never an absolute time alone. Every runtime gets the same thread
count: onnxruntime's intra-op pool, torch's ``set_num_threads``, TVM's thread pool.

Each runtime keeps its own threading defaults, but a pause of ``gap_s`` separates timed runs:
thread pools busy-wait after a run (OpenMP in torch, OpenBLAS, onnxruntime), and on 2 cores a
pool still spinning from the previous runtime's run halves the next one's speed (measured: BERT
535 ms back to back, 141 ms alone).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BenchResult",
    "bench_artifact",
    "bench_isolated",
    "seeded_inputs_for",
    "set_tvm_threads",
]


def set_tvm_threads(threads: int) -> None:
    """Asks TVM's CPU thread pool for ``threads`` workers (read when the pool first starts).

    Deliberately not ``runtime.config_threadpool``: it pins the calling thread to a core, and
    the BLAS threads that GEMMs spawn from it inherit that mask — measured 3× slower on BERT.
    """
    os.environ["TVM_NUM_THREADS"] = str(threads)


@dataclasses.dataclass
class BenchResult:
    """Median milliseconds per runtime, and each runtime's ratio to onnxruntime's median."""

    medians_ms: dict[str, float]
    samples_ms: dict[str, list[float]]
    runs: int
    threads: int

    @property
    def ratios(self) -> dict[str, float]:
        base = self.medians_ms.get("onnxruntime")
        if not base:
            return {}
        return {name: ms / base for name, ms in self.medians_ms.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "medians_ms": self.medians_ms,
            "ratios_to_onnxruntime": self.ratios,
            "runs": self.runs,
            "threads": self.threads,
        }


def seeded_inputs_for(model: Any, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for a loaded artifact (:class:`compiler.runtime.CompiledModel`).

    Symbolic dims are 1; value ranges are those of :func:`compiler.numerics.random_inputs`.
    Each array is 64-byte aligned (:func:`compiler.runtime.host_copy`), as are the buffers of a
    loop that runs the model repeatedly (``generate``'s KV caches): our runtime reads such inputs
    in place, where numpy's own 16-byte aligned arrays are copied in first; onnxruntime reads
    either in place.
    """
    from compiler.numerics import random_inputs
    from compiler.runtime import host_copy

    inputs = random_inputs(
        [
            (s["name"], np.dtype(s["dtype"]), [d if isinstance(d, int) else 1 for d in s["shape"]])
            for s in model.inputs
        ],
        seed=seed,
    )
    return {name: host_copy(array) for name, array in inputs.items()}


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def bench_artifact(
    artifact: str | Path,
    *,
    runs: int = 15,
    warmup: int = 3,
    threads: int = 2,
    against: tuple[str, ...] = ("onnxruntime",),
    torch_module: Any = None,
    torch_inputs: tuple[Any, ...] | None = None,
    seed: int = 0,
    gap_s: float = 0.3,
    extra: dict[str, Callable[[dict[str, np.ndarray]], Any]] | None = None,
) -> BenchResult:
    """Times the artifact at ``artifact`` against the named peers on seeded inputs.

    ``extra`` adds runtimes timed in the same interleaved loop: name -> a function of the
    seeded inputs (another artifact of the same model, ``torch.compile``, …).
    """
    from backends.onnxruntime.reference import ReferenceSession
    from compiler.artifact import ONNX_FILE
    from compiler.runtime import load

    set_tvm_threads(threads)
    model = load(artifact)
    inputs = seeded_inputs_for(model, seed=seed)
    runners: dict[str, Callable[[], Any]] = {"compiler": lambda: model(inputs)}
    if "onnxruntime" in against:
        session = ReferenceSession(Path(artifact) / ONNX_FILE, threads=threads, level="all")
        runners["onnxruntime"] = lambda: session.run(inputs)
    if "torch" in against and torch_module is not None:
        import torch

        torch.set_num_threads(threads)
        args = (
            torch_inputs
            if torch_inputs is not None
            else tuple(torch.from_numpy(inputs[name]) for name in model.input_names)
        )

        def run_torch() -> Any:
            with torch.inference_mode():
                return torch_module(*args)

        runners["torch"] = run_torch
    for name, fn in (extra or {}).items():
        runners[name] = lambda fn=fn: fn(inputs)
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(runs):
        for name, fn in runners.items():
            if len(runners) > 1:
                time.sleep(gap_s)
            samples[name].append(_time(fn))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return BenchResult(medians, samples, runs, threads)


def _time_in_this_process(
    artifact: str, runtime: str, runs: int, warmup: int, threads: int, seed: int
) -> list[float]:
    """Times one runtime alone (the body of an isolated measurement)."""
    from backends.onnxruntime.reference import ReferenceSession
    from compiler.artifact import ONNX_FILE
    from compiler.runtime import load

    set_tvm_threads(threads)
    model = load(artifact)
    inputs = seeded_inputs_for(model, seed=seed)
    if runtime == "compiler":
        fn: Callable[[], Any] = lambda: model(inputs)  # noqa: E731
    elif runtime == "onnxruntime":
        del model
        session = ReferenceSession(Path(artifact) / ONNX_FILE, threads=threads, level="all")
        fn = lambda: session.run(inputs)  # noqa: E731
    else:
        raise ValueError(f"unknown runtime {runtime!r}")
    for _ in range(warmup):
        fn()
    return [_time(fn) for _ in range(runs)]


def bench_isolated(
    artifact: str | Path,
    *,
    runtimes: tuple[str, ...] = ("compiler", "onnxruntime"),
    rounds: int = 3,
    runs: int = 5,
    warmup: int = 3,
    threads: int = 2,
    seed: int = 0,
) -> BenchResult:
    """Times each runtime in its own fresh process, alternating processes for ``rounds`` rounds.

    In one process, thread pools of different runtimes disturb each other on 2 cores (see the
    module docstring); separate processes measure each runtime as a deployment would run it.
    Medians are over all ``rounds × runs`` samples of each runtime.
    """
    import json
    import subprocess
    import sys

    samples: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(rounds):
        for name in runtimes:
            code = (
                "import json, sys\n"
                "from compiler.bench import _time_in_this_process as t\n"
                f"print(json.dumps(t({str(artifact)!r}, {name!r}, {runs}, {warmup}, "
                f"{threads}, {seed})))\n"
            )
            env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
            )
            samples[name].extend(json.loads(done.stdout.strip().splitlines()[-1]))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return BenchResult(medians, samples, rounds * runs, threads)
