"""Runs a partitioned artifact (``partition`` pass): stages in order, in this process or across
worker processes with micro-batching.

* :class:`PipelineModel` (what :func:`compiler.runtime.load` returns for such an artifact) runs
  the stages one after the other in this process, each on the values gathered so far.
* :class:`ProcessPipeline` runs the stages on worker processes (``multiprocessing``, spawned),
  each optionally pinned to one core (``os.sched_setaffinity``) with one TVM and one BLAS thread.
  Workers form a chain: the driver feeds micro-batches to worker 0, each worker runs its stages
  and passes the values later stages need to the next, the last returns the outputs. Because a
  worker takes micro-batch ``i + 1`` as soon as it has handed ``i`` on, stages overlap: with
  ``W`` balanced workers, throughput approaches ``W`` times one process's.

Values travel between processes as one frame of raw bytes (a JSON header with names, dtypes and
shapes, then the arrays' bytes): no pickle of data. Like :mod:`compiler.runtime`, this module
needs only numpy, safetensors and TVM's runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compiler.artifact import MANIFEST_FILE, read_manifest
from compiler.errors import ArtifactError, InputError

__all__ = [
    "THREAD_VARIABLES",
    "PipelineModel",
    "ProcessPipeline",
    "assign_stages",
    "await_ready",
    "environment",
    "is_staged",
    "pack_arrays",
    "split_micro_batches",
    "unpack_arrays",
]


def await_ready(controls, processes, timeout: float, kind: str, what: str) -> None:
    """Waits for each worker process to report ``ready`` on its control pipe; raises
    :class:`ArtifactError` naming the worker when one does not start or fails to load."""
    for w, control in enumerate(controls):
        if not control.poll(timeout):
            raise ArtifactError(f"{kind} {w} did not start within {timeout:.0f} s")
        try:
            message = control.recv_bytes().decode()
        except EOFError:  # died before reporting (a script without a __main__ guard)
            message = f"the process exited with code {processes[w].exitcode}"
        if message != "ready":
            raise ArtifactError(f"{kind} {w} failed to load its {what}: {message}")


def is_staged(path: str | os.PathLike) -> bool:
    """Whether the artifact at ``path`` is partitioned into stages (reads the manifest only;
    :func:`compiler.artifact.read_manifest` verifies it when the artifact is loaded)."""
    try:
        manifest = json.loads((Path(path) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and bool(manifest.get("stages"))


# ------------------------------------------------------------------------------------ frames
def pack_arrays(arrays: Mapping[str, np.ndarray], header: Mapping[str, Any] | None = None) -> bytes:
    """One frame: 4-byte header length, a JSON header, then each array's bytes in order."""
    items = [(name, np.ascontiguousarray(a)) for name, a in arrays.items()]
    meta = {
        **(header or {}),
        "arrays": [{"name": n, "dtype": str(a.dtype), "shape": list(a.shape)} for n, a in items],
    }
    head = json.dumps(meta).encode()
    return b"".join([struct.pack("<I", len(head)), head, *(a.tobytes() for _, a in items)])


def unpack_arrays(frame: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and the arrays of a frame made by :func:`pack_arrays` (arrays copy nothing)."""
    (size,) = struct.unpack_from("<I", frame)
    meta = json.loads(frame[4 : 4 + size])
    offset, arrays = 4 + size, {}
    for spec in meta.pop("arrays"):
        dtype = np.dtype(spec["dtype"])
        count = int(np.prod(spec["shape"])) if spec["shape"] else 1
        arrays[spec["name"]] = np.frombuffer(frame, dtype, count, offset).reshape(spec["shape"])
        offset += count * dtype.itemsize
    return meta, arrays


# --------------------------------------------------------------------------------- in-process
class PipelineModel:
    """A partitioned artifact, its stages run one after the other in this process.

    Same calling convention as :class:`compiler.runtime.CompiledModel`.
    """

    def __init__(
        self, path: str | os.PathLike, *, device: str | None = None, verify: bool = True
    ) -> None:
        from compiler.runtime import CompiledModel

        self.path = Path(path)
        self.manifest = read_manifest(self.path, verify=verify)
        self.inputs: list[dict[str, Any]] = self.manifest["inputs"]
        self.outputs: list[dict[str, Any]] = self.manifest["outputs"]
        self.stages_info: list[dict[str, Any]] = self.manifest["stages"]
        # The top-level manifest hashed every stage's files already.
        self.stages = [
            CompiledModel(self.path / s["path"], device=device, verify=False)
            for s in self.stages_info
        ]
        self.device = self.stages[0].device

    @property
    def input_names(self) -> list[str]:
        return [spec["name"] for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec["name"] for spec in self.outputs]

    def _given(self, inputs: Mapping[str, Any] | None, named: Mapping[str, Any]) -> dict:
        from compiler.runtime import merged_inputs

        return merged_inputs(inputs, named, self.input_names)

    def run_stage(self, index: int, env: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Runs stage ``index`` on the values it reads from ``env``; returns what it produces."""
        info = self.stages_info[index]
        return self.stages[index]({name: env[name] for name in info["inputs"]})

    def __call__(
        self, inputs: Mapping[str, Any] | None = None, **named: Any
    ) -> dict[str, np.ndarray]:
        env: dict[str, Any] = self._given(inputs, named)
        for index in range(len(self.stages)):
            env.update(self.run_stage(index, env))
        return {name: env[name] for name in self.output_names}

    def profile(self, inputs: Mapping[str, Any], runs: int = 5) -> list[float]:
        """Median seconds of each stage on ``inputs`` (after one warm-up run)."""
        env: dict[str, Any] = self._given(inputs, {})
        times = []
        for index in range(len(self.stages)):
            self.run_stage(index, env)
            samples = []
            for _ in range(runs):
                t0 = time.perf_counter()
                produced = self.run_stage(index, env)
                samples.append(time.perf_counter() - t0)
            env.update(produced)
            times.append(float(np.median(samples)))
        return times


def split_micro_batches(
    inputs: Mapping[str, np.ndarray], specs: Sequence[Mapping[str, Any]]
) -> list[dict[str, np.ndarray]]:
    """Splits a batch along axis 0 into micro-batches of the compiled batch size.

    Every input's leading dim must be a multiple of the compiled one (the manifest's shape).
    """
    counts = set()
    for spec in specs:
        size = spec["shape"][0] if spec["shape"] else None
        if not isinstance(size, int) or size <= 0:
            raise InputError(f"input {spec['name']!r} has no static leading (batch) dimension")
        got = np.asarray(inputs[spec["name"]]).shape[0]
        if got % size:
            raise InputError(
                f"input {spec['name']!r}: batch {got} is not a multiple of the compiled {size}"
            )
        counts.add(got // size)
    if len(counts) != 1:
        raise InputError("inputs disagree on the number of micro-batches")
    (count,) = counts
    return [
        {
            s["name"]: np.asarray(inputs[s["name"]])[i * s["shape"][0] : (i + 1) * s["shape"][0]]
            for s in specs
        }
        for i in range(count)
    ]


# ---------------------------------------------------------------------------- worker processes
def assign_stages(stages: int, workers: int) -> list[list[int]]:
    """Contiguous groups of stages, one per worker (stage ``s`` on worker ``s·W // K``)."""
    if not 1 <= workers <= stages:
        raise InputError(f"workers must be between 1 and the number of stages ({stages})")
    groups: list[list[int]] = [[] for _ in range(workers)]
    for s in range(stages):
        groups[s * workers // stages].append(s)
    return groups


THREAD_VARIABLES = (
    "TVM_NUM_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
)


@contextlib.contextmanager
def environment(values: Mapping[str, str]):
    """Sets environment variables while a child process is spawned (it copies them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _worker_main(
    path: str,
    stage_indices: list[int],
    keep: list[str],
    core: int | None,
    inbox,
    outbox,
    control,
) -> None:
    """A worker: loads its stages, then runs each frame from ``inbox`` and sends the result on.

    A frame with ``stop`` ends it (after forwarding the stop); an error is forwarded as a frame
    with ``error`` so that the driver raises it.
    """
    try:
        if core is not None:
            os.sched_setaffinity(0, {core})
        from compiler.runtime import CompiledModel

        manifest = read_manifest(path, verify=False)  # the driver verified it
        infos = [manifest["stages"][i] for i in stage_indices]
        models = [CompiledModel(Path(path) / i["path"], verify=False) for i in infos]
    except Exception as e:  # reported to the driver, which raises
        control.send_bytes(f"error: {e}".splitlines()[0].encode() if str(e) else b"error")
        return
    control.send_bytes(b"ready")
    while True:
        try:
            frame = inbox.recv_bytes()
        except EOFError:
            return
        meta, env = unpack_arrays(frame)
        if meta.get("stop") or meta.get("error"):
            outbox.send_bytes(frame)
            if meta.get("stop"):
                return
            continue
        try:
            env = dict(env)
            for info, model in zip(infos, models, strict=True):
                env.update(model({name: env[name] for name in info["inputs"]}))
            result = {name: env[name] for name in keep if name in env}
            outbox.send_bytes(pack_arrays(result, {"seq": meta["seq"]}))
        except Exception as e:
            message = f"stages {stage_indices}: {e}".splitlines()[0]
            outbox.send_bytes(pack_arrays({}, {"seq": meta["seq"], "error": message}))


class ProcessPipeline:
    """A partitioned artifact whose stages run on worker processes, micro-batches overlapping.

    ``workers``: how many processes (default: one per stage; stages are grouped contiguously).
    ``cores``: a core per worker to pin it to (``os.sched_setaffinity``), or None (no pinning).
    ``threads``: TVM and BLAS threads per worker (default 1). Use as a context manager, or call
    :meth:`close`; workers are stopped (and killed after ``timeout``) on exit.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        workers: int | None = None,
        cores: Sequence[int] | None = None,
        threads: int = 1,
        timeout: float = 120.0,
    ) -> None:
        import multiprocessing

        self.path = Path(path)
        self.manifest = read_manifest(self.path)  # verify once, before any worker loads code
        stages = self.manifest.get("stages")
        if not stages:
            raise ArtifactError(f"{self.path}: not a partitioned artifact (build with `partition`)")
        workers = workers or len(stages)
        self.groups = assign_stages(len(stages), workers)
        if cores is not None and len(cores) < workers:
            raise InputError(f"{workers} workers need {workers} cores to pin to, got {list(cores)}")
        self.inputs = self.manifest["inputs"]
        self.outputs = self.manifest["outputs"]
        self.timeout = timeout
        outputs = [o["name"] for o in self.outputs]
        context = multiprocessing.get_context("spawn")  # no fork of a process holding TVM threads
        self._processes = []
        self._controls = []
        pipes = [context.Pipe(duplex=False) for _ in range(workers + 1)]  # (reader, writer)
        self._first = pipes[0][1]
        self._last = pipes[workers][0]
        variables = {name: str(threads) for name in THREAD_VARIABLES}
        try:
            for w, group in enumerate(self.groups):
                later = {n for s in stages[group[-1] + 1 :] for n in s["inputs"]}
                keep = sorted(later | set(outputs))
                reader, writer = context.Pipe(duplex=False)
                core = cores[w] if cores is not None else None
                process = context.Process(
                    target=_worker_main,
                    args=(str(self.path), group, keep, core, pipes[w][0], pipes[w + 1][1], writer),
                    daemon=True,
                    name=f"compiler-stage-worker-{w}",
                )
                with environment(variables):
                    process.start()
                self._processes.append(process)
                self._controls.append(reader)
            await_ready(self._controls, self._processes, timeout, "stage worker", "stages")
        except BaseException:
            self.close()
            raise
        self._seq = 0

    def __enter__(self) -> ProcessPipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def input_names(self) -> list[str]:
        return [spec["name"] for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec["name"] for spec in self.outputs]

    def run_many(
        self, feeds: Iterable[Mapping[str, Any]], *, in_flight: int | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Runs each feed (one micro-batch, at the compiled shapes) through the pipeline, keeping
        up to ``in_flight`` (default: 2 per worker) in the pipeline; outputs in feed order."""
        feeds = list(feeds)
        window = threading.Semaphore(in_flight or 2 * len(self._processes))
        names = self.input_names
        first_seq = self._seq
        self._seq += len(feeds)
        failure: list[BaseException] = []

        def feed() -> None:  # a thread: sending may block while the last worker sends to us
            try:
                for i, inputs in enumerate(feeds):
                    window.acquire()
                    arrays = {n: np.asarray(inputs[n]) for n in names}
                    self._first.send_bytes(pack_arrays(arrays, {"seq": first_seq + i}))
            except BaseException as e:  # (a broken pipe: a worker died; reported below)
                failure.append(e)

        from compiler.runtime import require_inputs

        for inputs in feeds:
            require_inputs(inputs, names)
        sender = threading.Thread(target=feed, daemon=True)
        sender.start()
        results: dict[int, dict[str, np.ndarray]] = {}
        try:
            while len(results) < len(feeds):
                if not self._last.poll(self.timeout):
                    dead = [p.name for p in self._processes if not p.is_alive()]
                    why = f" ({', '.join(dead)} exited)" if dead else ""
                    raise ArtifactError(
                        f"the stage workers gave no result in {self.timeout} s{why}"
                    )
                meta, arrays = unpack_arrays(self._last.recv_bytes())
                if meta.get("error"):
                    raise ArtifactError(f"a stage worker failed: {meta['error']}")
                results[meta["seq"] - first_seq] = {
                    n: np.array(arrays[n]) for n in self.output_names
                }
                window.release()
        except BaseException:
            self.close()  # the pipeline's state is unknown: stop it
            raise
        sender.join()
        if failure:
            raise ArtifactError(f"sending to the stage workers failed: {failure[0]}")
        return [results[i] for i in range(len(feeds))]

    def __call__(
        self, inputs: Mapping[str, Any] | None = None, **named: Any
    ) -> dict[str, np.ndarray]:
        return self.run_many([{**(inputs or {}), **named}])[0]

    def run_batch(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Splits a batch into micro-batches of the compiled batch size (axis 0), runs them
        overlapped, and concatenates the outputs along axis 0."""
        results = self.run_many(split_micro_batches(inputs, self.inputs))
        return {n: np.concatenate([r[n] for r in results]) for n in self.output_names}

    def close(self) -> None:
        """Stops the workers: a stop frame down the chain, then join, then kill what is left."""
        processes, self._processes = getattr(self, "_processes", []), []
        if not processes:
            return
        with contextlib.suppress(OSError, ValueError):
            self._first.send_bytes(pack_arrays({}, {"stop": True}))
        deadline = time.monotonic() + 5.0
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5.0)
        for conn in [self._first, self._last, *self._controls]:
            with contextlib.suppress(OSError):
                conn.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
