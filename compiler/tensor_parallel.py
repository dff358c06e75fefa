"""Runs a tensor-parallel artifact (``partition(mode=tensor)``): ``K`` shards, each a chain of
segment libraries, exchanging slices and partial sums after every segment.

* :class:`ShardedModel` (what :func:`compiler.runtime.load` returns for such an artifact) runs
  the shards one after the other in this process: segment by segment, every shard's library on
  that shard's values, then the exchange (each shard gets the others' ``exchange`` values).
  The replicated nodes run once per shard, as on the workers.
* :class:`ShardWorkers` runs shard ``k`` on worker process ``k`` (spawned, optionally pinned to
  one core, one TVM and one BLAS thread each, like :class:`compiler.stages.ProcessPipeline`).
  The driver sends every worker the inputs; after each segment every worker sends its
  ``exchange`` values to every other worker (a pipe per ordered pair, one sender thread per
  pipe, so that no two workers block writing to each other) and reads theirs: an all-gather or
  all-reduce whose ``Concat``/``Sum`` is the first node of the next segment, the same on every
  worker. Worker 0 returns the outputs. All shards compute concurrently.

A worker that fails (a wrong input, a library error) keeps exchanging, sending an error frame
instead of values: every worker then skips the rest of that run and the driver raises the first
error; the workers stay usable. Values travel as raw-bytes frames
(:func:`compiler.stages.pack_arrays`), no pickle. Like :mod:`compiler.runtime`, this needs
only numpy, safetensors and TVM's runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compiler.artifact import MANIFEST_FILE, read_manifest
from compiler.errors import ArtifactError, InputError
from compiler.stages import (
    THREAD_VARIABLES,
    await_ready,
    environment,
    pack_arrays,
    split_micro_batches,
    unpack_arrays,
)

__all__ = ["ShardWorkers", "ShardedModel", "is_sharded"]


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether the artifact at ``path`` is tensor-parallel (reads the manifest only)."""
    try:
        manifest = json.loads((Path(path) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and bool(manifest.get("tensor_parallel"))


def _structure(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    layout = manifest.get("tensor_parallel")
    if not layout:
        raise ArtifactError(
            f"{path}: not a tensor-parallel artifact (build with `partition(mode=tensor)`)"
        )
    return layout


def _live_after(segments: list[dict], shard: int, outputs: list[str]) -> list[set[str]]:
    """Per segment, the names shard ``shard`` still needs after it (later inputs, outputs)."""
    live, needed = [], set(outputs)
    for segment in reversed(segments):
        live.append(set(needed))
        needed |= set(segment["shards"][shard]["inputs"])
    return live[::-1]


class ShardedModel:
    """A tensor-parallel artifact, its shards run one after the other in this process.

    Same calling convention as :class:`compiler.runtime.CompiledModel`.
    """

    def __init__(
        self, path: str | os.PathLike, *, device: str | None = None, verify: bool = True
    ) -> None:
        from compiler.runtime import CompiledModel

        self.path = Path(path)
        self.manifest = read_manifest(self.path, verify=verify)
        self.layout = _structure(self.manifest, self.path)
        self.shards: int = self.layout["shards"]
        self.segments: list[dict[str, Any]] = self.layout["segments"]
        self.inputs: list[dict[str, Any]] = self.manifest["inputs"]
        self.outputs: list[dict[str, Any]] = self.manifest["outputs"]
        # The top-level manifest hashed every shard's files already.
        self.modules = [
            [
                CompiledModel(self.path / s["path"], device=device, verify=False)
                for s in seg["shards"]
            ]
            for seg in self.segments
        ]
        self.device = self.modules[0][0].device

    @property
    def input_names(self) -> list[str]:
        return [spec["name"] for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec["name"] for spec in self.outputs]

    def __call__(
        self, inputs: Mapping[str, Any] | None = None, **named: Any
    ) -> dict[str, np.ndarray]:
        from compiler.runtime import merged_inputs

        given = merged_inputs(inputs, named, self.input_names)
        envs = [dict(given) for _ in range(self.shards)]
        for segment, modules in zip(self.segments, self.modules, strict=True):
            produced = [
                module({name: env[name] for name in info["inputs"]})
                for module, env, info in zip(modules, envs, segment["shards"], strict=True)
            ]
            for k, env in enumerate(envs):
                env.update(produced[k])
                for other, info in enumerate(segment["shards"]):
                    if other != k:
                        env.update({name: produced[other][name] for name in info["exchange"]})
        return {name: envs[0][name] for name in self.output_names}


# ---------------------------------------------------------------------------- worker processes
def _sender(conn, outgoing: queue.Queue) -> None:
    """Writes the queued frames to one peer, in order (a thread: writing may block)."""
    while True:
        frame = outgoing.get()
        if frame is None:
            return
        try:
            conn.send_bytes(frame)
        except OSError:
            return


def _worker_main(
    path: str,
    shard: int,
    core: int | None,
    inbox,
    outbox,
    peer_out: dict[int, Any],
    peer_in: dict[int, Any],
    control,
) -> None:
    """Worker ``shard``: loads its segment libraries, then runs each frame from ``inbox``."""
    try:
        if core is not None:
            os.sched_setaffinity(0, {core})
        from compiler.runtime import CompiledModel

        manifest = read_manifest(path, verify=False)  # the driver verified it
        segments = manifest["tensor_parallel"]["segments"]
        outputs = [o["name"] for o in manifest["outputs"]]
        mine = [segment["shards"][shard] for segment in segments]
        models = [CompiledModel(Path(path) / info["path"], verify=False) for info in mine]
        live = _live_after(segments, shard, outputs)
    except Exception as e:  # reported to the driver, which raises
        control.send_bytes(f"error: {e}".splitlines()[0].encode() if str(e) else b"error")
        return
    queues = {peer: queue.Queue() for peer in peer_out}
    threads = [
        threading.Thread(target=_sender, args=(peer_out[p], queues[p]), daemon=True) for p in queues
    ]
    for thread in threads:
        thread.start()
    control.send_bytes(b"ready")
    try:
        while True:
            try:
                frame = inbox.recv_bytes()
            except EOFError:
                return
            meta, env = unpack_arrays(frame)
            if meta.get("stop"):
                return
            env, error = dict(env), None
            compute = exchange = 0.0
            for j, (segment, info, model) in enumerate(zip(segments, mine, models, strict=True)):
                t0 = time.perf_counter()
                if error is None:
                    try:
                        env.update(model({name: env[name] for name in info["inputs"]}))
                    except Exception as e:
                        error = f"shard {shard}, segment {j}: {e}".splitlines()[0]
                t1 = time.perf_counter()
                compute += t1 - t0
                if queues and any(s["exchange"] for s in segment["shards"]):
                    values = {} if error else {name: env[name] for name in info["exchange"]}
                    out = pack_arrays(values, {"error": error} if error else {})
                    for q in queues.values():
                        q.put(out)
                    for peer in sorted(peer_in):
                        head, arrays = unpack_arrays(peer_in[peer].recv_bytes())
                        if head.get("error"):
                            error = error or head["error"]
                        elif error is None:
                            env.update(arrays)
                exchange += time.perf_counter() - t1
                env = {name: value for name, value in env.items() if name in live[j]}
            result = {} if error or shard else {name: env[name] for name in outputs}
            header = {
                "seq": meta["seq"],
                "error": error,
                "compute_s": compute,
                "exchange_s": exchange,
            }
            outbox.send_bytes(pack_arrays(result, header))
    finally:
        for q in queues.values():
            q.put(None)


class ShardWorkers:
    """A tensor-parallel artifact whose shards run on worker processes, concurrently.

    ``cores``: a core per worker to pin it to (``os.sched_setaffinity``), or None (no pinning).
    ``threads``: TVM and BLAS threads per worker (default 1). Use as a context manager, or call
    :meth:`close`; workers are stopped (and killed after a grace period) on exit. After a run,
    ``timings`` holds, per feed and per worker, the seconds spent computing (``compute_s``) and
    sending and waiting for the others' values (``exchange_s``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        cores: Sequence[int] | None = None,
        threads: int = 1,
        timeout: float = 120.0,
    ) -> None:
        import multiprocessing

        self.path = Path(path)
        self.manifest = read_manifest(self.path)  # verify once, before any worker loads code
        layout = _structure(self.manifest, self.path)
        shards = self.shards = layout["shards"]
        if cores is not None and len(cores) < shards:
            raise InputError(f"{shards} shards need {shards} cores to pin to, got {list(cores)}")
        self.inputs = self.manifest["inputs"]
        self.outputs = self.manifest["outputs"]
        self.timeout = timeout
        context = multiprocessing.get_context("spawn")  # no fork of a process holding TVM threads
        self._processes: list[Any] = []
        self._controls: list[Any] = []
        self._inboxes: list[Any] = []
        self._outboxes: list[Any] = []
        peers = {
            (a, b): context.Pipe(duplex=False)
            for a in range(shards)
            for b in range(shards)
            if a != b
        }  # (reader, writer) from shard a to shard b
        variables = {name: str(threads) for name in THREAD_VARIABLES}
        try:
            for k in range(shards):
                inbox_reader, inbox_writer = context.Pipe(duplex=False)
                outbox_reader, outbox_writer = context.Pipe(duplex=False)
                control_reader, control_writer = context.Pipe(duplex=False)
                process = context.Process(
                    target=_worker_main,
                    args=(
                        str(self.path),
                        k,
                        cores[k] if cores is not None else None,
                        inbox_reader,
                        outbox_writer,
                        {b: peers[k, b][1] for b in range(shards) if b != k},
                        {a: peers[a, k][0] for a in range(shards) if a != k},
                        control_writer,
                    ),
                    daemon=True,
                    name=f"compiler-shard-worker-{k}",
                )
                with environment(variables):
                    process.start()
                self._processes.append(process)
                self._controls.append(control_reader)
                self._inboxes.append(inbox_writer)
                self._outboxes.append(outbox_reader)
            await_ready(self._controls, self._processes, timeout, "shard worker", "libraries")
        except BaseException:
            self.close()
            raise
        self._seq = 0
        self.timings: list[list[dict[str, float]]] = []

    def __enter__(self) -> ShardWorkers:
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
        self, feeds: Iterable[Mapping[str, Any]], *, in_flight: int = 2
    ) -> list[dict[str, np.ndarray]]:
        """Runs each feed (at the compiled shapes) on all shards, keeping up to ``in_flight``
        queued so that the workers never wait for the driver; outputs in feed order."""
        from compiler.runtime import require_inputs

        feeds = list(feeds)
        names = self.input_names
        for inputs in feeds:
            require_inputs(inputs, names)
        window = threading.Semaphore(in_flight)
        first_seq = self._seq
        self._seq += len(feeds)
        failure: list[BaseException] = []

        def feed() -> None:  # a thread: sending may block while a worker sends to us
            try:
                for i, inputs in enumerate(feeds):
                    window.acquire()
                    frame = pack_arrays(
                        {n: np.asarray(inputs[n]) for n in names}, {"seq": first_seq + i}
                    )
                    for inbox in self._inboxes:
                        inbox.send_bytes(frame)
            except BaseException as e:  # (a broken pipe: a worker died; reported below)
                failure.append(e)

        sender = threading.Thread(target=feed, daemon=True)
        sender.start()
        results, errors = [], []
        self.timings = []
        try:
            for _ in feeds:  # every reply is read, even after an error: none is left queued
                replies = [self._receive(k) for k in range(self.shards)]
                errors += [meta["error"] for meta, _ in replies if meta.get("error")]
                self.timings.append(
                    [{k: meta[k] for k in ("compute_s", "exchange_s")} for meta, _ in replies]
                )
                if not errors:
                    results.append({n: np.array(replies[0][1][n]) for n in self.output_names})
                window.release()
        except BaseException:
            self.close()  # the workers' state is unknown: stop them
            raise
        sender.join()
        if failure:
            self.close()
            raise ArtifactError(f"sending to the shard workers failed: {failure[0]}")
        if errors:  # the workers skipped the rest of that run and are ready for the next
            raise ArtifactError(f"a shard worker failed: {errors[0]}")
        return results

    def _receive(self, k: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if not self._outboxes[k].poll(self.timeout):
            dead = [p.name for p in self._processes if not p.is_alive()]
            why = f" ({', '.join(dead)} exited)" if dead else ""
            self.close()
            raise ArtifactError(f"shard worker {k} gave no result in {self.timeout} s{why}")
        return unpack_arrays(self._outboxes[k].recv_bytes())

    def __call__(
        self, inputs: Mapping[str, Any] | None = None, **named: Any
    ) -> dict[str, np.ndarray]:
        return self.run_many([{**(inputs or {}), **named}])[0]

    def run_batch(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Splits a batch into runs of the compiled batch size (axis 0) and concatenates."""
        results = self.run_many(split_micro_batches(inputs, self.inputs))
        return {n: np.concatenate([r[n] for r in results]) for n in self.output_names}

    def close(self) -> None:
        """Stops the workers: a stop frame each, then join, then kill what is left."""
        processes, self._processes = getattr(self, "_processes", []), []
        if not processes:
            return
        stop = pack_arrays({}, {"stop": True})
        for inbox in self._inboxes:
            with contextlib.suppress(OSError, ValueError):
                inbox.send_bytes(stop)
        deadline = time.monotonic() + 5.0
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5.0)
        for conn in [*self._inboxes, *self._outboxes, *self._controls]:
            with contextlib.suppress(OSError):
                conn.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
