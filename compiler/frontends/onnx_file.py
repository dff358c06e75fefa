"""Loads ONNX files safely into ``onnx_ir``.

Weights stored as external data are memory-mapped by ``onnx_ir`` (nothing is read until used).
Before anything is mapped, every external-data reference is checked:

* its ``location`` must be a relative path that stays inside the model's folder after resolving
  ``..``; absolute paths are refused;
* no component of the path (inside the model's folder) may be a symbolic link;
* the file must exist and be a regular file, and ``offset + length`` must lie inside it.

Then the ONNX checker validates the model (it reads the file by path, so it sees external data
without loading it). Every failure is a :class:`~compiler.errors.ModelLoadError` naming the file,
and the tensor or node at fault.
"""

from __future__ import annotations

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
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:  # onnx_ir raises several types on malformed graphs
        raise ModelLoadError(f"{path}: cannot convert the model to onnx_ir: {e}") from e
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    return model


def check_external_data(proto: onnx.ModelProto, base_dir: Path, *, model_path: Path) -> bool:
    """Raises :class:`UnsafeModelError` if a tensor's external data is unsafe or missing.

    Returns whether the model has external data at all.
    """
    base = base_dir.resolve()
    found = False
    for tensor in _all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        where = f"{model_path}: tensor {tensor.name!r} stores its data in {location!r}"
        if not location:
            raise ModelLoadError(f"{where}: the external data has no location")
        rel = Path(location)
        if rel.is_absolute() or location.startswith(("/", "\\")):
            raise UnsafeModelError(f"{where}, an absolute path; external data must be relative")
        target = base / rel
        if not target.resolve().is_relative_to(base):
            raise UnsafeModelError(f"{where}, which is outside the model's folder {base}")
        probe = base
        for part in rel.parts:
            probe = probe / part
            if probe.is_symlink():
                raise UnsafeModelError(f"{where}, which goes through the symbolic link {probe}")
        if not target.is_file():
            raise ModelLoadError(f"{where}, which does not exist or is not a regular file")
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        size = target.stat().st_size
        if offset < 0 or (length is not None and offset + int(length) > size):
            raise ModelLoadError(
                f"{where} at offset {offset} length {length}, past the end of the file "
                f"({size} bytes)"
            )
    return found


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
