"""Loads ONNX files safely into ``onnx_ir``.

Weights stored as external data are memory-mapped by ``onnx_ir`` (nothing is read until used).
Before anything is mapped, every external-data reference is checked:

* its ``location`` must be a relative path (UTF-8, no NUL) that stays inside the model's folder
  after resolving ``..``; absolute paths are refused;
* no component of the path (inside the model's folder) may be a symbolic link (links are never
  followed, so a link loop is refused too);
* the file must exist and be a regular file (not a FIFO or a folder); ``offset`` and ``length``
  must be non-negative decimal integers, ``length`` at least the tensor's bytes, and
  ``offset + length`` (or the tensor's bytes) must lie inside the file;
* ``location``, ``offset`` and ``length`` may each appear once (readers differ on repeats).

Then the ONNX checker validates the model (it reads the file by path, so it sees external data
without loading it); graph inputs and outputs need a defined element type. Every failure is a
:class:`~compiler.errors.ModelLoadError` naming the file, and the tensor or node at fault
(``tools/fuzz.py`` checks this on mutated models).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from compiler.errors import ModelLoadError, UnsafeModelError

__all__ = ["check_external_data", "load_onnx"]


def load_onnx(path: str | os.PathLike) -> ir.Model:
    """Returns the model stored at ``path``; never modifies the file."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a regular file (expected an .onnx model file)")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise ModelLoadError(
            f"{path}: not a valid ONNX model (the protobuf could not be parsed: {e}); "
            "is the file truncated or of another format?"
        ) from e
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the file: {e.strerror or e}") from e
    if not proto.opset_import or not proto.HasField("graph"):
        raise ModelLoadError(
            f"{path}: not an ONNX model (no graph or no opset import); is it another format?"
        )
    has_external = check_external_data(proto, path.parent, model_path=path)
    unnamed = not proto.graph.name
    if unnamed:
        # The checker insists on a graph name that nothing else needs (onnx_ir saves none).
        proto.graph.name = path.stem or "main"
    try:
        # With external data the checker must read the file by path to see the data files.
        onnx.checker.check_model(str(path) if has_external else proto)
    except onnx.checker.ValidationError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        if not (unnamed and first_line.startswith("Field 'name' of 'graph'")):
            raise ModelLoadError(
                f"{path}: the ONNX checker rejected the model: {first_line}"
            ) from e
    except UnicodeDecodeError as e:  # the checker's message quotes a name that is not UTF-8
        raise ModelLoadError(
            f"{path}: the ONNX checker rejected the model (a name or string in it is not valid "
            "UTF-8)"
        ) from e
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:  # onnx_ir raises several types on malformed graphs
        raise ModelLoadError(f"{path}: cannot convert the model to onnx_ir: {e}") from e
    for kind, values in (("input", model.graph.inputs), ("output", model.graph.outputs)):
        for value in values:
            # The checker lets elem_type 0 through; nothing can feed or describe such a value.
            if value.dtype == ir.DataType.UNDEFINED:
                raise ModelLoadError(
                    f"{path}: the graph {kind} {value.name!r} has an undefined element type"
                )
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    return model


def check_external_data(proto: onnx.ModelProto, base_dir: Path, *, model_path: Path) -> bool:
    """Raises :class:`UnsafeModelError` if a tensor's external data is unsafe, and
    :class:`ModelLoadError` if it is malformed or missing.

    Returns whether the model has external data at all.
    """
    base = base_dir.resolve()
    found = False
    for tensor in _all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        _check_external_tensor(tensor, base, model_path)
    return found


def _check_external_tensor(tensor: onnx.TensorProto, base: Path, model_path: Path) -> None:
    info: dict[str, str] = {}
    for entry in tensor.external_data:
        # Readers differ on which of repeated keys they use (onnx takes the last): refuse them,
        # so that what is checked here is what gets read.
        if entry.key in info and entry.key in ("location", "offset", "length"):
            raise ModelLoadError(
                f"{model_path}: tensor {tensor.name!r} has two external-data {entry.key!r} entries"
            )
        info[entry.key] = entry.value
    location = info.get("location", "")
    shown = location if len(location) <= 200 else f"{location[:200]}…"
    where = f"{model_path}: tensor {tensor.name!r} stores its data in {shown!r}"
    if not isinstance(location, str):  # protobuf hands out invalid UTF-8 strings as bytes
        raise ModelLoadError(f"{where}: the external data location is not UTF-8 text")
    if not location:
        raise ModelLoadError(f"{where}: the external data has no location")
    if "\0" in location:
        # A C reader would stop at the NUL and open another file than the one checked here.
        raise UnsafeModelError(f"{where}, a path with a NUL character")
    rel = Path(location)
    if rel.is_absolute() or location.startswith(("/", "\\")):
        raise UnsafeModelError(f"{where}, an absolute path; external data must be relative")
    try:
        # Links first, without following any: resolving a link loop would fail, and a link
        # inside the folder pointing at a file inside it would pass the containment check.
        probe = base
        for part in rel.parts:
            probe = probe / part
            if probe.is_symlink():
                raise UnsafeModelError(f"{where}, which goes through the symbolic link {probe}")
        target = base / rel
        if not target.resolve().is_relative_to(base):
            raise UnsafeModelError(f"{where}, which is outside the model's folder {base}")
        if not target.is_file():
            raise ModelLoadError(f"{where}, which does not exist or is not a regular file")
        size = target.stat().st_size
    except (OSError, RuntimeError) as e:  # a name too long, a link loop, no permission
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ModelLoadError(f"{where}, which cannot be checked: {reason}") from e
    offset = _non_negative(info.get("offset"), "offset", where) or 0
    length = _non_negative(info.get("length"), "length", where)
    needed = _tensor_bytes(tensor)
    if length is not None and needed is not None and length < needed:
        raise ModelLoadError(
            f"{where}: length {length} is less than the {needed} bytes of its "
            f"{list(tensor.dims)} elements"
        )
    end = offset + (length if length is not None else needed or 0)
    if offset > size or end > size:
        raise ModelLoadError(
            f"{where} at offset {offset} length {length if length is not None else needed}, "
            f"past the end of the file ({size} bytes)"
        )


def _non_negative(value: str | None, key: str, where: str) -> int | None:
    """An external-data offset or length: absent (None), or a non-negative decimal integer."""
    if value is None or value == "":
        return None
    text = value.strip() if isinstance(value, str) else ""
    if not text.isdecimal():
        raise ModelLoadError(f"{where}: its {key} {value!r} is not a non-negative integer")
    return int(text)


def _tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's elements take in external data; None if its dtype has no fixed size."""
    try:
        dtype = ir.DataType(tensor.data_type)
    except ValueError:
        return None  # the checker names the bad dtype
    if dtype in (ir.DataType.UNDEFINED, ir.DataType.STRING) or any(d < 0 for d in tensor.dims):
        return None
    count = math.prod(tensor.dims)
    return (count * dtype.bitwidth + 7) // 8


def _all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in the model: initializers and tensor attributes, subgraphs included."""
    graphs: list[onnx.GraphProto] = [proto.graph]
    for function in proto.functions:
        for node in function.node:
            graphs.extend(_subgraphs(node))
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
            graphs.extend(_subgraphs(node))


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs
