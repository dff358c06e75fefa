"""Loads a built artifact and runs it: what a deployment needs, and nothing else.

Imports only the standard library, numpy and TVM's runtime; no pass, frontend or
backend code. ``load`` verifies every file's sha256 against the manifest first, so a tampered or
incomplete artifact fails before any code from it is loaded.

    model = compiler.runtime.load("out/")
    outputs = model({"input_ids": ids})        # dict of numpy arrays by output name
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from compiler.artifact import LIBRARY_FILE, WEIGHTS_FILE, read_manifest
from compiler.errors import ArtifactError, BackendError, InputError
from compiler.narrow_storage import from_storage, to_storage
from compiler.safetensors_io import SafetensorsError, read_safetensors
from compiler.threads import default_tvm_threads

__all__ = ["ALIGNMENT", "CompiledModel", "host_copy", "host_zeros", "load"]

# TVM's idle workers yield the CPU ``TVM_THREAD_POOL_SPIN_COUNT`` times before they sleep; a
# kernel that finds them asleep waits for the wake-up. TVM's default, 300000, keeps them busy
# ~150 ms after each run, taking the cores from whatever runs next; 0 makes every parallel kernel
# a wake-up: GPT-2 prefill 177 ms against 161 with 10000, which spins ~5 ms after a run (measured
# on this 2-core machine, 15 runs each). Read when TVM's pool starts; a value the user set wins.
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "10000")
# One TVM worker per physical core (TVM's own default is half the hardware threads).
default_tvm_threads()


def _device(kind: str):
    import tvm

    if kind in ("cpu", "llvm"):
        return tvm.cpu(0)
    if kind in ("cuda", "gpu"):
        return tvm.cuda(0)
    raise ArtifactError(f"unknown device {kind!r}: use 'cpu' or 'cuda'")


ALIGNMENT = 64  # bytes: TVM's allocations, and what its generated code assumes of a buffer


def _aligned_empty(shape: tuple[int, ...], dtype: Any, allocate=np.empty) -> np.ndarray:
    """An ``ALIGNMENT``-aligned array: a view into ``allocate``'d bytes, ``ALIGNMENT`` more."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = allocate(nbytes + ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def host_zeros(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """A zero-filled numpy array whose data is ``ALIGNMENT``-byte aligned (numpy's own large
    arrays are 16-byte aligned): a :class:`CompiledModel` reads such inputs in place instead of
    copying them, which a decode loop feeding back its KV cache every step wants."""
    return _aligned_empty(tuple(shape), dtype, np.zeros)


def host_copy(array: np.ndarray) -> np.ndarray:
    """``array`` copied into an ``ALIGNMENT``-byte aligned, C-contiguous buffer of its shape and
    dtype: an input a :class:`CompiledModel` reads in place (see :func:`host_zeros`)."""
    copy = _aligned_empty(array.shape, array.dtype)
    copy[...] = array
    return copy


class CompiledModel:
    """A loaded artifact. Call it with numpy arrays by input name; get numpy arrays by name."""

    def __init__(
        self, path: str | os.PathLike, *, device: str | None = None, verify: bool = True
    ) -> None:
        import tvm

        import compiler.kernels  # noqa: F401  (registers the host kernels compiled code calls)

        self.path = Path(path)
        self.manifest = read_manifest(self.path, verify=verify)
        target_kind = self.manifest["target"]["kind"]
        self.device = _device(device or ("cuda" if target_kind == "cuda" else "cpu"))
        self._host = self.device.dlpack_device_type() == tvm.cpu().dlpack_device_type()
        self._lock = threading.Lock()
        self.inputs: list[dict[str, Any]] = self.manifest["inputs"]
        self.outputs: list[dict[str, Any]] = self.manifest["outputs"]
        try:
            library = tvm.runtime.load_module(str(self.path / LIBRARY_FILE))
            self._vm = tvm.runtime.vm.VirtualMachine(library, self.device)
        except Exception as e:
            raise ArtifactError(f"{self.path / LIBRARY_FILE}: cannot load the library: {e}") from e
        # One weight at a time: the file's bytes are never all in memory next to the device's copy.
        entries = {entry["key"]: entry for entry in self.manifest["weights"]["order"]}
        loaded = {}
        try:
            for key, array in read_safetensors(self.path / WEIGHTS_FILE):
                if key in entries:
                    loaded[key] = self._weight(entries[key], array)
        except SafetensorsError as e:
            raise ArtifactError(str(e)) from e
        self._params = []
        for key in entries:
            if key not in loaded:
                raise ArtifactError(f"{self.path / WEIGHTS_FILE}: weight {key} is missing")
            self._params.append(loaded[key])

    def _library_input(self, array: np.ndarray) -> Any:
        """An input as the library takes it.

        Narrow dtypes (float8, int4, ...) cross as bytes (:mod:`compiler.narrow_storage`). On
        the host, an array that is C-contiguous, writable and 64-byte aligned (what TVM's
        generated code assumes; :func:`host_zeros` makes such arrays) is read in place; any
        other is first copied into an aligned numpy buffer. A GPT-2 decode step's 9.4 MB KV
        cache took 1.3 ms to copy in, and ``tvm.runtime.tensor`` costs ~25 µs even for a
        token id, where DLPack takes 0.4 µs.
        """
        import tvm

        array = to_storage(array)
        if not self._host or array.dtype.kind not in "fiub":
            return tvm.runtime.tensor(array, self.device)
        if not (
            array.ctypes.data % ALIGNMENT == 0
            and array.flags.c_contiguous
            and array.flags.writeable
        ):
            array = host_copy(array)
        return tvm.runtime.from_dlpack(array)

    def _weight(self, entry: dict[str, Any], array: np.ndarray) -> Any:
        import tvm

        array = _restore_dtype(array, entry["dtype"])
        if array.size != int(np.prod(entry["shape"])):
            raise ArtifactError(
                f"{self.path / WEIGHTS_FILE}: weight {entry['key']} has shape "
                f"{list(array.shape)}, the manifest says {entry['shape']}"
            )
        array = array.reshape(entry["shape"])  # (older files stored 0-d tensors as [1])
        return tvm.runtime.tensor(array, self.device)

    @property
    def input_names(self) -> list[str]:
        return [spec["name"] for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec["name"] for spec in self.outputs]

    def _check(self, spec: dict[str, Any], value: Any) -> np.ndarray:
        array = np.asarray(value)
        name, dtype = spec["name"], spec["dtype"]
        if str(array.dtype) != dtype:
            raise InputError(f"input {name!r} must be {dtype}, got {array.dtype}")
        shape = spec["shape"]
        if shape is not None:
            if array.ndim != len(shape):
                raise InputError(
                    f"input {name!r} must have rank {len(shape)} (shape {shape}), got "
                    f"shape {list(array.shape)}"
                )
            for want, got in zip(shape, array.shape, strict=True):
                if isinstance(want, int) and want != got:
                    raise InputError(
                        f"input {name!r} must have shape {shape}, got {list(array.shape)}"
                    )
        bounds = spec.get("index_range")
        if bounds is not None and array.size:
            _check_index_range(name, array, bounds)
        # np.ascontiguousarray returns at least 1-d arrays: a scalar input would become [1].
        return np.require(array, requirements="C")

    def __call__(
        self, inputs: Mapping[str, Any] | None = None, **named: Any
    ) -> dict[str, np.ndarray]:
        given = merged_inputs(inputs, named, self.input_names)
        arrays = [self._check(spec, given[spec["name"]]) for spec in self.inputs]
        _check_symbolic_dims(self.inputs, arrays)
        try:
            with self._lock:  # one run at a time: the VM is not reentrant
                args = [self._library_input(array) for array in arrays]
                # copied out: a result may be a weight, an input or a constant of the library
                values = [t.numpy() for t in _flatten(self._vm["main"](*args, *self._params))]
        except Exception as e:  # TVM's own errors (an unsupported dtype, a failed check)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"{self.path}: the compiled model failed to run: {first}") from e
        if len(values) != len(self.outputs):
            raise ArtifactError(
                f"{self.path}: the library returned {len(values)} outputs, the manifest lists "
                f"{len(self.outputs)}"
            )
        return {
            spec["name"]: from_storage(value, spec["dtype"])
            for spec, value in zip(self.outputs, values, strict=True)
        }


def _check_index_range(name: str, array: np.ndarray, bounds: dict[str, Any]) -> None:
    """Indices out of ``[low, high)`` would make the compiled gather read out of bounds."""
    low, high = int(bounds["low"]), int(bounds["high"])
    bad = (array < low) | (array >= high)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"input {name!r} has {array[where]} at index {list(where)}, outside [{low}, {high}): "
            f"it indexes {bounds['op']} node {bounds['node']!r} (an axis of {high})"
        )


def require_inputs(given: Mapping[str, Any], names: list[str]) -> None:
    """Raises :class:`InputError` for the first of ``names`` that ``given`` lacks."""
    missing = [n for n in names if n not in given]
    if missing:
        raise InputError(f"missing input {missing[0]!r} (the model takes {names})")


def merged_inputs(
    inputs: Mapping[str, Any] | None, named: Mapping[str, Any], names: list[str]
) -> dict[str, Any]:
    """``inputs`` and keyword inputs together, exactly ``names`` (none missing, none unknown)."""
    given = {**(inputs or {}), **named}
    require_inputs(given, names)
    extra = sorted(set(given) - set(names))
    if extra:
        raise InputError(f"unknown input {extra[0]!r} (the model takes {names})")
    return given


def _check_symbolic_dims(specs: list[dict[str, Any]], arrays: list[np.ndarray]) -> None:
    """A symbolic dim (a name, e.g. ``seq``) takes any size, but one size across all inputs."""
    bound: dict[str, tuple[int, str]] = {}
    for spec, array in zip(specs, arrays, strict=True):
        for want, got in zip(spec["shape"] or (), array.shape, strict=False):
            if isinstance(want, str):
                size, first = bound.setdefault(want, (got, spec["name"]))
                if size != got:
                    raise InputError(
                        f"input {spec['name']!r} has {want}={got}, but input {first!r} has "
                        f"{want}={size} (one size per symbolic dim)"
                    )


def _flatten(result: Any) -> list[Any]:
    """The library's result (a tensor or nested tuples of them) as a flat list of tensors."""
    if hasattr(result, "numpy"):
        return [result]
    values: list[Any] = []
    for item in result:
        values.extend(_flatten(item))
    return values


def _restore_dtype(array: np.ndarray, dtype: str) -> np.ndarray:
    """Weights whose dtype safetensors-numpy lacks (bfloat16, ...) are stored as raw bits."""
    if str(array.dtype) == dtype:
        return array
    import ml_dtypes  # noqa: F401  (registers bfloat16 and friends with numpy)

    return array.view(np.dtype(dtype))


def load(
    path: str | os.PathLike, *, device: str | None = None, verify: bool = True
) -> CompiledModel:
    """Loads the artifact folder at ``path`` for ``device``.

    Every file's sha256 is checked against the manifest first; ``verify=False`` skips that, for a
    caller that has just verified an enclosing artifact (an LLM folder's own manifest).
    A partitioned artifact (``partition`` pass) runs its stages one after the other in this
    process (:class:`compiler.stages.PipelineModel`; worker processes: ``compiler.stages``), a
    tensor-parallel one its shards (:class:`compiler.tensor_parallel.ShardedModel`; worker
    processes: ``compiler.tensor_parallel``).
    """
    from compiler.stages import PipelineModel, is_staged
    from compiler.tensor_parallel import ShardedModel, is_sharded

    if is_staged(path):
        return PipelineModel(path, device=device, verify=verify)
    if is_sharded(path):
        return ShardedModel(path, device=device, verify=verify)
    return CompiledModel(path, device=device, verify=verify)
