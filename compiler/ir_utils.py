"""Small ``onnx_ir`` helpers that passes share."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx_ir as ir

__all__ = [
    "add_initializer",
    "drop_unused",
    "name_selected",
    "read_records",
    "unique_initializer_name",
    "write_records",
]


def unique_initializer_name(graph: ir.Graph, name: str) -> str:
    """``name``, or ``name_1``, ``name_2``… — the first one no initializer of ``graph`` has."""
    base, i = name, 1
    while name in graph.initializers:
        name, i = f"{base}_{i}", i + 1
    return name


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Registers ``array`` (a contiguous copy when needed) as a new initializer of ``graph``."""
    array = np.ascontiguousarray(array)
    name = unique_initializer_name(graph, name)
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape = ir.Shape(array.shape)
    value.dtype = ir.DataType.from_numpy(array.dtype)
    graph.register_initializer(value)
    return value


def read_records(model: ir.Model, key: str) -> list[dict]:
    """The JSON list a pass left in ``model``'s metadata under ``key`` (empty if none)."""
    text = model.metadata_props.get(key)
    return json.loads(text) if text else []


def write_records(model: ir.Model, key: str, records: list[dict]) -> None:
    model.metadata_props[key] = json.dumps(records)


def name_selected(name: str | None, include: str, exclude: str) -> bool:
    """Whether a node name passes ``include``/``exclude`` regexes (empty: no constraint)."""
    name = name or ""
    return (not include or re.search(include, name) is not None) and (
        not exclude or re.search(exclude, name) is None
    )


def drop_unused(graph: ir.Graph, values: list[ir.Value]) -> None:
    """Removes each value's producer node (e.g. a weight's ``Transpose``) or initializer once
    nothing uses it."""
    for value in values:
        if value.uses() or value.is_graph_output():
            continue
        producer = value.producer()
        if producer is not None:
            if producer.graph is graph:  # (not removed already)
                graph.remove(producer, safe=True)
        elif value.is_initializer():
            graph.initializers.pop(value.name, None)
