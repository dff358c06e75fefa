"""Fuzzes the ONNX loader and the CLI with mutated models: only documented errors may escape.

    python tools/fuzz.py --cases 10000 --seed 0 --timeout-per-case 30 --json fuzz.json

Seeds: small hand-made models (an MLP, a model with external data, control flow, a model-local
function, shape ops) and the bundled example (GPT-2 from a transformers config) exported to ONNX
at a small size. Each case takes one seed and mutates it

* at the protobuf byte level: bit flips, byte overwrites, truncation, inserted/deleted/duplicated
  ranges, splices with another seed, huge varints;
* at the structure level: dangling inputs, dropped nodes, cycles, duplicate names, unknown ops and
  domains, wrong dtypes, bad and huge shapes, initializer data that does not match its dims, bad
  attributes, bad opsets and IR versions, recursive functions, bad sparse initializers;
* in its external data: locations outside the folder (``..``, absolute), through a symbolic link
  (file or parent folder), with a NUL byte, too long, a symlink loop, a FIFO, a folder; offsets
  and lengths negative, non-numeric or past the end of the file.

Property: ``compiler.load(path)`` and then what ``python -m compiler inspect`` does with the
model (in-process) either succeed or raise a :class:`compiler.errors.CompilerError`; the model's
files are never modified; nothing crashes (each case runs in a worker process whose death is
detected and which is restarted) or hangs (each case has a time limit; the worker is killed).
Every ``--cli-every``-th case also runs ``python -m compiler inspect`` and every
``--build-every``-th ``python -m compiler build`` in a subprocess: the exit status must be 0, 1
or 2 (3 is an internal error, a signal is a crash) and the output must not show a traceback.

Cases are reproducible: case ``i`` of seed ``S`` is drawn from ``random.Random(f"{S}:{i}")``;
``--only I --keep DIR`` writes that case's files into ``DIR`` for debugging.
The summary (``--json``) lists cases, outcomes by error type, failures grouped by exception type
and place, and the slowest case. Exit status: 0 when no failure, 1 otherwise.

One run (tools/results/fuzz-10000-seed0-2026-11-29.json, 2 shared cores, 17 min): 10,000 cases,
1,879 loaded, 7,874 ModelLoadError, 247 UnsafeModelError, 100 CLI inspects and 29 CLI builds,
no failure.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
MODEL_DIR = "model"  # each case: <case>/model/model.onnx; <case>/outside.data lies outside it
WORKER_MEMORY = 4 << 30  # address-space limit of the worker: a runaway allocation fails there


# ------------------------------------------------------------------------------------- seeds
def _hand_made_seeds() -> dict[str, dict[str, bytes]]:
    """Small models written with onnx.helper: name -> {relative path: bytes}."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def model(graph, opset=21, functions=()):
        return helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("local", 1)]
            if functions
            else [helper.make_opsetid("", opset)],
            ir_version=10,
            functions=list(functions),
        )

    def init(name, shape, dtype=np.float32):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)

    seeds: dict[str, dict[str, bytes]] = {}
    mlp = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"),
            helper.make_node("Add", ["a", "b1"], ["b"], name="add1"),
            helper.make_node("Relu", ["b"], ["c"], name="relu"),
            helper.make_node("Identity", ["c"], ["d"], name="id"),
            helper.make_node("MatMul", ["d", "w2"], ["e"], name="mm2"),
            helper.make_node("Add", ["e", "b2"], ["y"], name="add2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [init("w1", (8, 16)), init("b1", (16,)), init("w2", (16, 4)), init("b2", (4,))],
    )
    seeds["mlp"] = {MODEL_FILE: model(mlp).SerializeToString()}

    shapes = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0], name="tr"),
            helper.make_node("Reshape", ["t", "shape"], ["r"], name="reshape"),
            helper.make_node("Concat", ["r", "r"], ["c"], axis=0, name="concat"),
            helper.make_node("Gather", ["c", "idx"], ["g"], axis=1, name="gather"),
            helper.make_node("Constant", [], ["k"], value=init("kv", (1,)), name="const"),
            helper.make_node("Mul", ["g", "k"], ["m"], name="mul"),
            helper.make_node("Softmax", ["m"], ["y"], axis=-1, name="softmax"),
        ],
        "shapes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array([4, -1], np.int64), "shape"),
            numpy_helper.from_array(np.array([0, 1], np.int64), "idx"),
        ],
    )
    seeds["shapes"] = {MODEL_FILE: model(shapes).SerializeToString()}

    then = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3])],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [3])],
    )
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "x"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [3]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [3]),
        ],
    )
    control = helper.make_graph(
        [
            helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=other, name="if"),
            helper.make_node("Loop", ["n", "c", "z"], ["y"], body=body, name="loop"),
        ],
        "control",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.array(2, np.int64), "n")],
    )
    seeds["control"] = {MODEL_FILE: model(control).SerializeToString()}

    function = helper.make_function(
        "local",
        "Gelu2",
        ["a"],
        ["b"],
        [
            helper.make_node("Sigmoid", ["a"], ["s"]),
            helper.make_node("Mul", ["a", "s"], ["b"]),
        ],
        [helper.make_opsetid("", 21)],
    )
    uses = helper.make_graph(
        [
            helper.make_node("Gelu2", ["x"], ["h"], domain="local", name="f1"),
            helper.make_node("Gelu2", ["h"], ["y"], domain="local", name="f2"),
        ],
        "uses_function",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    seeds["function"] = {MODEL_FILE: model(uses, functions=[function]).SerializeToString()}

    # External data: two weights in one data file, at offsets 0 and 4096.
    w1 = rng.standard_normal((16, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    data = w1.tobytes().ljust(4096, b"\0") + w2.tobytes()
    inits = []
    for name, array, offset in (("w1", w1, 0), ("w2", w2, 4096)):
        tensor = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", DATA_FILE), ("offset", offset), ("length", array.nbytes)):
            tensor.external_data.add(key=key, value=str(value))
        inits.append(tensor)
    ext = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2"),
        ],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        inits,
    )
    seeds["external"] = {MODEL_FILE: model(ext).SerializeToString(), DATA_FILE: data}
    return seeds


def load_seeds(cache: Path, *, example: bool = True) -> dict[str, dict[str, bytes]]:
    """The hand-made seeds, and the bundled example exported small (cached in ``cache``)."""
    seeds = _hand_made_seeds()
    if example:
        path = cache / "gpt2-small.onnx"
        if not path.is_file():
            from compiler.examples import export_onnx

            export_onnx("gpt2", path, layers=1, hidden=32, heads=2, vocab=64, seq=8)
        seeds["gpt2"] = {MODEL_FILE: path.read_bytes()}
    return seeds


# ----------------------------------------------------------------------------------- a case
@dataclasses.dataclass
class Case:
    """One mutated model and the files around it, relative to the case's own folder."""

    index: int
    seed: str
    root: Path  # where the case's files are written (absolute locations point into it)
    mutations: list[str] = dataclasses.field(default_factory=list)
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    symlinks: dict[str, str] = dataclasses.field(default_factory=dict)  # link -> target
    fifos: list[str] = dataclasses.field(default_factory=list)
    folders: list[str] = dataclasses.field(default_factory=list)

    @property
    def model_path(self) -> str:
        return f"{MODEL_DIR}/{MODEL_FILE}"

    def write(self) -> Path:
        """Creates the case's files under ``root`` (which must not exist); returns the model."""
        root = self.root
        root.mkdir(parents=True)
        (root / MODEL_DIR).mkdir()
        for rel in self.folders:
            (root / rel).mkdir(parents=True, exist_ok=True)
        for rel, data in self.files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        for rel, target in self.symlinks.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, root / rel)
        for rel in self.fifos:
            os.mkfifo(root / rel)
        return root / self.model_path


# ------------------------------------------------------------------------ byte-level mutators
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF)


def bit_flips(rng: random.Random, data: bytearray, others: list[bytes]) -> str:
    n = rng.choice((1, 1, 2, 4, 16))
    for _ in range(n):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return f"flip {n} bits"


def overwrite_bytes(rng: random.Random, data: bytearray, others: list[bytes]) -> str:
    n = rng.choice((1, 2, 8))
    for _ in range(n):
        data[rng.randrange(len(data))] = rng.choice(INTERESTING_BYTES)
    return f"overwrite {n} bytes"


def truncate(rng: random.Random, data: bytearray, others: list[bytes]) -> str:
    keep = rng.randrange(1, len(data))
    del data[keep:]
    return f"truncate to {keep}"


def insert_bytes(rng: random.Random, data: bytearray, others: list[bytes]) -> str:
    at = rng.randrange(len(data) + 1)
    chunk = bytes(rng.randrange(256) for _ in range(rng.choice((1, 4, 64))))
    data[at:at] = chunk
    return f"insert {len(chunk)} bytes at {at}"


def delete_range(rng: random.Random, data: bytearray, others: list[bytes]) -> str:
    at = rng.randrange(len(data))
    n = min(len(data) - at, rng.choice((1, 8, 256)))
    if n >= len(data):
        n = 1
    del data[at : at + n]
    return f"delete {n} bytes at {at}"


def duplicate_range(rng: random.Random, data: bytearray, others: list[bytes]) -> str:
    at = rng.randrange(len(data))
    chunk = data[at : at + rng.choice((2, 16, 512))]
    to = rng.randrange(len(data) + 1)
    data[to:to] = chunk
    return f"duplicate {len(chunk)} bytes from {at} at {to}"


def splice(rng: random.Random, data: bytearray, others: list[bytes]) -> str:
    other = rng.choice(others)
    cut, cut_other = rng.randrange(len(data)), rng.randrange(len(other))
    data[cut:] = other[cut_other:]
    return f"splice at {cut} with another seed from {cut_other}"


def huge_varint(rng: random.Random, data: bytearray, others: list[bytes]) -> str:
    # A field length or value of 2**63-ish: a length that claims far more bytes than the file has.
    at = rng.randrange(len(data))
    data[at : at + 1] = b"\xff" * 9 + b"\x01"
    return f"huge varint at {at}"


BYTE_MUTATORS: list[Callable[[random.Random, bytearray, list[bytes]], str]] = [
    bit_flips,
    overwrite_bytes,
    truncate,
    insert_bytes,
    delete_range,
    duplicate_range,
    splice,
    huge_varint,
]


# ------------------------------------------------------------------- structure-level mutators
def _graphs(proto) -> list:
    """The main graph, every subgraph and every function body (as node containers)."""
    found, stack = [], [proto.graph]
    while stack:
        graph = stack.pop()
        found.append(graph)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return found + list(proto.functions)


def _a_node(rng: random.Random, proto):
    containers = [g for g in _graphs(proto) if len(g.node)]
    if not containers:
        return None, None
    graph = rng.choice(containers)
    return graph, rng.choice(graph.node)


def _value_names(graph) -> list[str]:
    names = [o for n in graph.node for o in n.output]
    if hasattr(graph, "initializer"):
        names += [i.name for i in graph.initializer] + [i.name for i in graph.input]
    else:
        names += list(graph.input)
    return [n for n in names if n]


def _tensors(proto) -> list:
    tensors = []
    for graph in _graphs(proto):
        tensors.extend(getattr(graph, "initializer", []))
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
    return tensors


def _value_infos(proto) -> list:
    infos = []
    for graph in _graphs(proto):
        if hasattr(graph, "initializer"):  # a GraphProto (a function's inputs are names)
            infos.extend([*graph.input, *graph.output, *graph.value_info])
    return [i for i in infos if i.type.HasField("tensor_type")]


def dangling_input(rng, proto, case):
    _, node = _a_node(rng, proto)
    if node is None:
        return None
    if not node.input:
        node.input.append("nowhere")
    else:
        node.input[rng.randrange(len(node.input))] = rng.choice(("nowhere", "", " ", "x:0"))
    return f"dangling input of {node.op_type}"


def drop_node(rng, proto, case):
    graph, node = _a_node(rng, proto)
    if node is None:
        return None
    graph.node.remove(node)
    return f"drop {node.op_type}"


def cycle(rng, proto, case):
    graph, node = _a_node(rng, proto)
    if node is None:
        return None
    later = list(graph.node)[list(graph.node).index(node) :]
    source = rng.choice(later)
    if not source.output:
        return None
    if not node.input:
        node.input.append(source.output[0])
    else:
        node.input[rng.randrange(len(node.input))] = rng.choice(source.output)
    return f"cycle: {node.op_type} reads {source.op_type}'s output"


def duplicate_names(rng, proto, case):
    graph = rng.choice(_graphs(proto))
    choice = rng.randrange(5)
    if choice == 0 and len(graph.node):
        graph.node.append(copy.deepcopy(rng.choice(graph.node)))
        return "duplicate a node (same output names)"
    if choice == 1 and getattr(graph, "initializer", None):
        graph.initializer.append(copy.deepcopy(rng.choice(graph.initializer)))
        return "duplicate an initializer"
    if choice == 2 and hasattr(graph, "initializer") and len(graph.input):
        graph.input.append(copy.deepcopy(rng.choice(graph.input)))
        return "duplicate a graph input"
    if choice == 3 and hasattr(graph, "initializer") and len(graph.output):
        graph.output.append(copy.deepcopy(rng.choice(graph.output)))
        return "duplicate a graph output"
    names = _value_names(graph)
    nodes = [n for n in graph.node if n.output]
    if not names or not nodes:
        return None
    node = rng.choice(nodes)
    node.output[0] = rng.choice(names)
    return f"{node.op_type} writes an existing value name"


def unknown_op(rng, proto, case):
    _, node = _a_node(rng, proto)
    if node is None:
        return None
    choice = rng.randrange(4)
    if choice == 0:
        node.op_type = rng.choice(("NoSuchOp", "", "relu", "Conv3DTranspose", "\x00", "Ω" * 40))
    elif choice == 1:
        node.domain = rng.choice(("com.unknown", "ai.onnx.ml", "com.microsoft", "local"))
    elif choice == 2:
        node.op_type = rng.choice(("Loop", "If", "Scan", "Resize", "Einsum", "Gelu2", "Constant"))
    else:
        node.op_type, node.domain = rng.choice(
            (("MatMulNBits", "com.microsoft"), ("SkipLayerNormalization", "com.microsoft"))
        )
    return f"op becomes {node.domain}:{node.op_type!r}"


DTYPES = (*range(0, 27), 99, -1, 2**31 - 1)


def wrong_dtype(rng, proto, case):
    if rng.random() < 0.5:
        infos = _value_infos(proto)
        if not infos:
            return None
        info = rng.choice(infos)
        info.type.tensor_type.elem_type = rng.choice(DTYPES)
        return f"value {info.name!r} gets dtype {info.type.tensor_type.elem_type}"
    tensors = _tensors(proto)
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    tensor.data_type = rng.choice(DTYPES)
    return f"tensor {tensor.name!r} gets dtype {tensor.data_type}"


HUGE_DIMS = (0, -1, -(2**62), 2**31, 2**40, 2**62, 2**63 - 1)


def bad_shape(rng, proto, case):
    if rng.random() < 0.5:
        infos = _value_infos(proto)
        if not infos:
            return None
        info = rng.choice(infos)
        shape = info.type.tensor_type.shape
        choice = rng.randrange(4)
        if choice == 0 and len(shape.dim):
            shape.dim[rng.randrange(len(shape.dim))].dim_value = rng.choice(HUGE_DIMS)
        elif choice == 1 and len(shape.dim):
            shape.dim[rng.randrange(len(shape.dim))].dim_param = rng.choice(("", "N", "1", "a b"))
        elif choice == 2:
            for _ in range(rng.choice((1, 7, 40))):
                shape.dim.add().dim_value = rng.choice((1, 2, 2**20))
        else:
            info.type.tensor_type.ClearField("shape")
        return f"value {info.name!r} gets shape {[d.dim_value or d.dim_param for d in shape.dim]}"
    tensors = _tensors(proto)
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    choice = rng.randrange(3)
    if choice == 0 and len(tensor.dims):
        tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice(HUGE_DIMS)
    elif choice == 1:
        tensor.dims.append(rng.choice((1, 3, 2**33)))
    else:
        del tensor.dims[:]
        tensor.dims.extend([2**31 - 1] * rng.choice((2, 3)))
    return f"tensor {tensor.name!r} gets dims {list(tensor.dims)}"


def bad_tensor_data(rng, proto, case):
    tensors = [t for t in _tensors(proto) if t.data_location != 1]
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    choice = rng.randrange(5)
    if choice == 0:
        tensor.raw_data = tensor.raw_data[: rng.randrange(len(tensor.raw_data) + 1)]
        what = "truncated raw_data"
    elif choice == 1:
        tensor.raw_data += b"\x01" * rng.choice((1, 3, 1000))
        what = "extended raw_data"
    elif choice == 2:
        tensor.float_data.extend([1.0, float("nan")])  # both raw_data and float_data set
        what = "float_data besides raw_data"
    elif choice == 3:
        tensor.segment.begin, tensor.segment.end = rng.choice(((0, 1), (5, 2), (-1, 2**40)))
        what = "a segment"
    else:
        tensor.ClearField("raw_data")
        tensor.int64_data.extend([2**62, -1])
        what = "int64_data instead of raw_data"
    return f"tensor {tensor.name!r}: {what}"


def bad_attribute(rng, proto, case):
    from onnx import AttributeProto, helper

    _, node = _a_node(rng, proto)
    if node is None:
        return None
    choice = rng.randrange(6)
    if choice == 0 and len(node.attribute):
        attr = rng.choice(node.attribute)
        attr.type = rng.randrange(15)  # an enum: values past 14 cannot be set
        return f"{node.op_type}.{attr.name} gets attribute type {attr.type}"
    if choice == 1 and len(node.attribute):
        attr = rng.choice(node.attribute)
        node.attribute.remove(attr)
        return f"{node.op_type} loses attribute {attr.name}"
    if choice == 2:
        node.attribute.append(
            helper.make_attribute(rng.choice(("axis", "perm", "zz", "")), rng.choice((1, 2**62)))
        )
        return f"{node.op_type} gets an extra attribute"
    if choice == 3 and len(node.attribute):
        node.attribute.append(copy.deepcopy(rng.choice(node.attribute)))
        return f"{node.op_type} gets a duplicate attribute"
    if choice == 4:
        value = rng.choice(([9, 9], [-5], [2**62, 0], []))
        name = rng.choice(("perm", "axes", "pads"))
        node.attribute.append(helper.make_attribute(name, value, attr_type=AttributeProto.INTS))
        return f"{node.op_type} gets a bad list attribute"
    attr = AttributeProto(name="axis", type=AttributeProto.INT, i=rng.choice((-99, 2**62)))
    for existing in list(node.attribute):
        if existing.name == "axis":
            node.attribute.remove(existing)
    node.attribute.append(attr)
    return f"{node.op_type}.axis = {attr.i}"


def bad_versions(rng, proto, case):
    choice = rng.randrange(4)
    if choice == 0:
        proto.ir_version = rng.choice((0, 1, 3, 99, -1, 2**62))
        return f"ir_version {proto.ir_version}"
    if choice == 1 and len(proto.opset_import):
        proto.opset_import[0].version = rng.choice((0, 1, 6, 99, -1, 2**62))
        return f"opset {proto.opset_import[0].version}"
    if choice == 2 and len(proto.opset_import):
        proto.opset_import.append(copy.deepcopy(proto.opset_import[0]))
        proto.opset_import[-1].version = 13
        return "the default domain imported twice"
    del proto.opset_import[:]
    return "no opset import"


def bad_outputs(rng, proto, case):
    from onnx import TensorProto, helper

    choice = rng.randrange(4)
    if choice == 0:
        del proto.graph.output[:]
        return "no graph outputs"
    if choice == 1:
        del proto.graph.node[:]
        return "no nodes"
    if choice == 2:
        proto.graph.output.append(helper.make_tensor_value_info("ghost", TensorProto.FLOAT, [1]))
        return "an output nothing produces"
    proto.graph.input.append(helper.make_tensor_value_info("", TensorProto.FLOAT, [1]))
    return "an unnamed graph input"


def recursive_function(rng, proto, case):
    from onnx import helper

    name = rng.choice(("Rec", "Gelu2"))
    function = helper.make_function(
        "local",
        name,
        ["a"],
        ["b"],
        [helper.make_node(name, ["a"], ["b"], domain="local")],
        [helper.make_opsetid("", 21), helper.make_opsetid("local", 1)],
    )
    proto.functions.append(function)
    if not any(o.domain == "local" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("local", 1))
    if proto.graph.input and proto.graph.output:
        proto.graph.node.append(
            helper.make_node(
                name, [proto.graph.input[0].name], ["rec_out"], domain="local", name="rec"
            )
        )
    return f"recursive function {name}"


def bad_sparse(rng, proto, case):
    import numpy as np
    from onnx import helper, numpy_helper

    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sp")
    indices = numpy_helper.from_array(
        np.array(rng.choice(([0, 99], [-1, 0], [1, 0], [0])), np.int64), ""
    )
    sparse = helper.make_sparse_tensor(values, indices, rng.choice(([4], [2**40], [-1], [2, 2])))
    proto.graph.sparse_initializer.append(sparse)
    return f"sparse initializer with indices {list(indices.int64_data) or indices.raw_data}"


def rename_value(rng, proto, case):
    """Valid but unusual: a value renamed everywhere (unicode, spaces, slashes, very long)."""
    graph = proto.graph
    names = _value_names(graph) + [o.name for o in graph.output]
    if not names:
        return None
    old = rng.choice(names)
    new = rng.choice(("ü" * 50, "a b", "x:0/1", "n" * 3000, "0", "Ω.weight", "input_ids"))
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for collection in (graph.input, graph.output, graph.value_info, graph.initializer):
        for item in collection:
            if item.name == old:
                item.name = new
    return f"rename {old[:20]!r} to {new[:20]!r}"


def special_weights(rng, proto, case):
    """Valid but unusual: a float initializer full of NaN, inf, denormals or zeros."""
    import numpy as np

    tensors = [t for t in proto.graph.initializer if t.data_type == 1 and t.raw_data]
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    value = rng.choice((np.nan, np.inf, -np.inf, 1e-45, 0.0, 3e38))
    tensor.raw_data = np.full(len(tensor.raw_data) // 4, value, np.float32).tobytes()
    return f"{tensor.name!r} filled with {value}"


def symbolic_dims(rng, proto, case):
    """Valid but unusual: input dimensions made symbolic, or renamed."""
    inputs = [i for i in proto.graph.input if i.type.tensor_type.shape.dim]
    if not inputs:
        return None
    info = rng.choice(inputs)
    dim = rng.choice(info.type.tensor_type.shape.dim)
    dim.dim_param = rng.choice(("N", "batch", "seq len", "ü", "d" * 500))
    return f"input {info.name!r} gets a symbolic dim {dim.dim_param[:20]!r}"


def extras(rng, proto, case):
    """Valid but unusual: unused initializers, metadata, doc strings, unused opset domains."""
    import numpy as np
    from onnx import helper, numpy_helper

    choice = rng.randrange(4)
    if choice == 0:
        array = np.ones(rng.choice(((1,), (0,), (3, 0), (1000,))), np.float32)
        proto.graph.initializer.append(numpy_helper.from_array(array, "unused_weight"))
        return f"an unused initializer {list(array.shape)}"
    if choice == 1:
        helper.set_model_props(proto, {"k": "v" * 1000, "": "", "ü": "\n"})
        return "metadata"
    if choice == 2:
        proto.graph.doc_string = "doc " * 10000
        for node in proto.graph.node:
            node.doc_string = "ü"
        return "doc strings"
    proto.opset_import.append(helper.make_opsetid(rng.choice(("com.microsoft", "x.y")), 1))
    return "an unused opset domain"


UNUSUAL_MUTATORS = [rename_value, special_weights, symbolic_dims, extras]


STRUCTURE_MUTATORS = [
    dangling_input,
    drop_node,
    cycle,
    duplicate_names,
    unknown_op,
    wrong_dtype,
    bad_shape,
    bad_tensor_data,
    bad_attribute,
    bad_versions,
    bad_outputs,
    recursive_function,
    bad_sparse,
]


# ------------------------------------------------------------------------ external-data cases
def _set_entry(tensor, key: str, value: str | None) -> None:
    for entry in list(tensor.external_data):
        if entry.key == key:
            tensor.external_data.remove(entry)
    if value is not None:
        tensor.external_data.add(key=key, value=value)


def external_data(rng, proto, case):
    """Points (or moves) a tensor's external data somewhere it must not go, or past its file."""
    tensors = _tensors(proto)
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    if tensor.data_location != 1:  # make it external first, into a new data file
        raw = tensor.raw_data or b"\0" * 64
        tensor.ClearField("raw_data")
        tensor.data_location = 1
        name = f"{tensor.name or 't'}.bin".replace("/", "_")
        case.files[f"{MODEL_DIR}/{name}"] = raw
        _set_entry(tensor, "location", name)
        _set_entry(tensor, "length", str(len(raw)))
    location = next((e.value for e in tensor.external_data if e.key == "location"), DATA_FILE)
    data = case.files.get(f"{MODEL_DIR}/{location}", b"\0" * 4096)
    case.files.setdefault("outside.data", data)
    choice = rng.randrange(20)
    what = ""
    if choice == 0:
        new = rng.choice(("../outside.data", "sub/../../outside.data", "./../outside.data"))
    elif choice == 1:
        new = f"{case.root}/outside.data"  # absolute, and the file exists
    elif choice == 2:
        new = rng.choice(("/etc/passwd", "/dev/zero", "//outside", "\\outside.data"))
    elif choice == 3:
        case.symlinks[f"{MODEL_DIR}/link.data"] = location
        new = "link.data"
        what = " (a symlink to the data file, inside the folder)"
    elif choice == 4:
        case.symlinks[f"{MODEL_DIR}/link.data"] = "../outside.data"
        new = "link.data"
        what = " (a symlink to a file outside)"
    elif choice == 5:
        case.files[f"real/{location}"] = data
        case.symlinks[f"{MODEL_DIR}/dir"] = "../real"
        new = f"dir/{location}"
        what = " (through a symlinked parent folder)"
    elif choice == 6:
        case.symlinks[f"{MODEL_DIR}/loop"] = "loop"
        new = rng.choice(("loop", "loop/x"))
        what = " (a symlink loop)"
    elif choice == 7:
        new = rng.choice(("a\x00b", f"{location}\x00.txt", "\x00"))
    elif choice == 8:
        new = rng.choice(("x" * 5000, "d/" * 3000 + "x", "y" * 256))
    elif choice == 9:
        case.fifos.append(f"{MODEL_DIR}/fifo.data")
        new = "fifo.data"
        what = " (a FIFO: reading it would block)"
    elif choice == 10:
        case.folders.append(f"{MODEL_DIR}/folder.data")
        new = rng.choice(("folder.data", ".", ""))
    elif choice == 11:
        new = rng.choice((MODEL_FILE, "missing.data", "C:\\data.bin", "~/data", "%2e%2e/x"))
    elif choice == 12:
        _set_entry(tensor, "offset", rng.choice(("-1", "-4096", "-9999999999999")))
        new, what = None, "negative offset"
    elif choice == 13:
        _set_entry(tensor, "offset", rng.choice(("abc", "1.5", "", " 7", "0x10", "1e3")))
        new, what = None, "offset not an integer"
    elif choice == 14:
        _set_entry(tensor, "offset", str(rng.choice((len(data), len(data) + 1, 2**63, 2**70))))
        new, what = None, "offset at or past the end"
    elif choice == 15:
        _set_entry(tensor, "length", rng.choice(("-1", "0", "abc", str(2**64), str(len(data) + 1))))
        new, what = None, "bad length"
    elif choice == 16:
        _set_entry(tensor, "location", None)
        new = None
        what = "no location"
    elif choice == 17:
        tensor.external_data.add(
            key=rng.choice(("checksum", "basepath", "", "location")), value="x"
        )
        new = None
        what = "an extra key"
    elif choice == 18:
        tensor.data_location = 0  # DEFAULT (an enum: other values cannot be set)
        new = None
        what = f"data_location {tensor.data_location} with external entries"
    else:
        case.files[f"{MODEL_DIR}/{location}"] = data[: rng.randrange(len(data) + 1)]
        new = None
        what = "truncated data file"
    if new is not None:
        _set_entry(tensor, "location", new)
        # Keep ``location`` first (onnx reads entries in order; some readers take the first).
    entries = {e.key: e.value[:40] for e in tensor.external_data}
    if new is not None:
        return f"external data of {tensor.name!r}: {new[:60]!r}{what}"
    return f"external data of {tensor.name!r}: {what} {entries}"


# ------------------------------------------------------------------------------- make a case
def make_case(index: int, seed: int, seeds: dict[str, dict[str, bytes]], root: Path) -> Case:
    """Case ``index`` of campaign ``seed``, to be written at ``root``: deterministic."""
    import onnx

    rng = random.Random(f"{seed}:{index}")
    name = rng.choice(sorted(seeds))
    case = Case(index, name, root)
    for rel, data in seeds[name].items():
        case.files[f"{MODEL_DIR}/{rel}"] = data
    mode = rng.random()
    proto = onnx.ModelProto()
    proto.ParseFromString(seeds[name][MODEL_FILE])
    if mode < 0.6:  # structure (and external data), then for 0.45..0.6 bytes too
        mutators = STRUCTURE_MUTATORS + [external_data] * (4 if name == "external" else 1)
    else:  # 0.85..1: unusual but valid models; 0.6..0.85 bytes only
        mutators = UNUSUAL_MUTATORS if mode >= 0.85 else []
    for _ in range(rng.choice((1, 1, 1, 2, 3)) if mutators else 0):
        done = rng.choice(mutators)(rng, proto, case)
        if done:
            case.mutations.append(done)
    data = proto.SerializeToString()
    if 0.45 <= mode < 0.85:
        buffer = bytearray(data)
        others = [s[MODEL_FILE] for k, s in seeds.items() if k != name] or [data]
        for _ in range(rng.choice((1, 1, 2, 3))):
            if not buffer:
                break
            case.mutations.append(rng.choice(BYTE_MUTATORS)(rng, buffer, others))
        data = bytes(buffer)
    case.files[case.model_path] = data
    return case


# ------------------------------------------------------------------------------ the worker
def _file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (symbolic links and FIFOs are not read)."""
    hashes = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def check_case(path: Path, root: Path) -> dict[str, Any]:
    """Loads ``path`` and runs ``inspect`` on it, in this process; says what happened."""
    import io

    from rich.console import Console

    import compiler
    from compiler import cli
    from compiler.errors import CompilerError

    before = _file_hashes(root)
    start = time.perf_counter()
    stage = "load"
    reply: dict[str, Any] = {"outcome": "ok"}
    try:
        compiler.load(path)
        stage = "inspect"
        cli.out = Console(file=io.StringIO(), width=200)  # inspect prints tables; discard them
        args = cli.make_parser().parse_args(["inspect", str(path)])
        args.func(args)
    except CompilerError as e:
        reply = {"outcome": type(e).__name__, "stage": stage, "message": str(e)[:300]}
    except Exception as e:  # the property: nothing else may escape
        frames = traceback.extract_tb(e.__traceback__)
        place = next(
            (f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames)),
            "?",
        )
        reply = {
            "outcome": "unexpected",
            "type": type(e).__name__,
            "place": place,
            "stage": stage,
            "message": str(e)[:300],
            "traceback": "".join(traceback.format_exception(e))[-3000:],
        }
    reply["seconds"] = time.perf_counter() - start
    if _file_hashes(root) != before:
        reply.update(outcome="unexpected", type="modified-input", place=stage, message="")
    return reply


def worker_main() -> int:
    """Reads one JSON request per line (``{"path": ..., "root": ...}``), answers one per line."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    import compiler.frontends  # noqa: F401  (imported before the first case is timed)

    for line in sys.stdin:
        request = json.loads(line)
        if request.get("self_test") == "crash":  # the harness checks that it sees a crash
            os.kill(os.getpid(), signal.SIGSEGV)
        if request.get("self_test") == "hang":  # ... and a hang
            time.sleep(3600)
        reply = check_case(Path(request["path"]), Path(request["root"]))
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


class Worker:
    """A ``--worker`` subprocess: a crash or a hang ends only it, and it is started again."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def _start(self) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            self.starts += 1
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--worker"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    cwd=REPO,
                )
        return self.process

    def run(
        self, path: Path, root: Path, timeout: float, *, self_test: str | None = None
    ) -> dict[str, Any]:
        """Runs one case; ``self_test`` ("crash", "hang") makes the worker misbehave instead."""
        if self.process is None or self.process.poll() is not None:
            self.warm_up()  # the imports are not part of a case's time
        process = self._start()
        start = time.perf_counter()
        assert process.stdin is not None and process.stdout is not None
        request = {"path": str(path), "root": str(root), "self_test": self_test}
        try:
            process.stdin.write((json.dumps(request) + "\n").encode())
            process.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        if not ready:
            self.stop()
            return {
                "outcome": "unexpected",
                "type": "hang",
                "place": "worker",
                "message": f"no answer within {timeout:.0f} s",
                "seconds": time.perf_counter() - start,
            }
        line = process.stdout.readline()
        if not line:
            code = process.wait()
            self.process = None
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            tail = self.log.read_bytes()[-2000:].decode(errors="replace")
            return {
                "outcome": "unexpected",
                "type": "crash",
                "place": how,
                "message": tail[-500:],
                "seconds": time.perf_counter() - start,
            }
        return json.loads(line)

    def warm_up(self, timeout: float = 120) -> None:
        """Starts the worker and waits until its imports are done (a case on a missing file)."""
        process = self._start()
        assert process.stdin is not None and process.stdout is not None
        folder = self.log.parent / "warm-up"
        folder.mkdir(exist_ok=True)
        request = {"path": str(folder / MODEL_FILE), "root": str(folder)}
        process.stdin.write((json.dumps(request) + "\n").encode())
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        if ready:
            process.stdout.readline()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


# ------------------------------------------------------------------------------ CLI samples
def run_cli(command: str, path: Path, root: Path, timeout: float) -> dict[str, Any]:
    """``python -m compiler inspect|build`` on the case: exit 0/1/2 and one error line."""
    argv = [sys.executable, "-m", "compiler", command, str(path)]
    out = root / "out.artifact"
    if command == "build":
        argv += ["-o", str(out)]
    env = {**os.environ, "COLUMNS": "200", "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    try:
        result = subprocess.run(
            argv, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {
            "outcome": "unexpected",
            "type": f"cli-{command}-hang",
            "place": command,
            "message": f"no exit within {timeout:.0f} s",
            "seconds": time.perf_counter() - start,
        }
    seconds = time.perf_counter() - start
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    problem = None
    if result.returncode < 0:
        problem = f"killed by {signal.Signals(-result.returncode).name}"
    elif result.returncode not in (0, 1, 2):
        problem = f"exit status {result.returncode}"
    elif "Traceback" in result.stderr:
        problem = "a traceback on stderr"
    elif result.returncode != 0 and not last.startswith("error:"):
        problem = "the last line is not one 'error:' line"
    elif command == "build" and result.returncode != 0 and out.exists():
        problem = "a failed build left its output folder"
    if problem:
        return {
            "outcome": "unexpected",
            "type": f"cli-{command}",
            "place": problem,
            "message": last[:300],
            "seconds": seconds,
        }
    outcome = "ok" if result.returncode == 0 else f"exit {result.returncode}"
    return {"outcome": outcome, "message": last[:200], "seconds": seconds}


# ---------------------------------------------------------------------------- the campaign
def campaign(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="compiler-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    seeds = load_seeds(Path(args.seed_cache or work), example=not args.no_example)
    worker = Worker(work / "worker.log")
    outcomes: Counter[str] = Counter()
    cli_outcomes: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    slowest: dict[str, Any] = {"seconds": -1.0}
    loaded_count = 0
    cli_errors: list[str] = []  # the documented errors the CLI samples printed (a sample)
    start = time.perf_counter()
    indices = [args.only] if args.only is not None else range(args.cases)
    try:
        for done, index in enumerate(indices, 1):
            root = (Path(args.keep) if args.keep else work) / f"case-{index:06d}"
            if root.exists():
                shutil.rmtree(root)
            case = make_case(index, args.seed, seeds, root)
            path = case.write()
            results = [("load+inspect", worker.run(path, root, args.timeout_per_case))]
            if args.cli_every and index % args.cli_every == 0:
                results.append(("cli inspect", run_cli("inspect", path, root, 120)))
            loaded = results[0][1]["outcome"] == "ok"
            loaded_count += loaded
            if args.build_every and (
                index % args.build_every == 0
                or (loaded and loaded_count % max(1, args.build_every // 10) == 1)
            ):
                results.append(("cli build", run_cli("build", path, root, 600)))
            for what, reply in results:
                if what == "load+inspect":
                    outcomes[
                        reply["outcome"] if reply["outcome"] != "unexpected" else "FAILED"
                    ] += 1
                    if reply["seconds"] > slowest["seconds"]:
                        slowest = {
                            "case": index,
                            "seed_model": case.seed,
                            "mutations": case.mutations,
                            "seconds": round(reply["seconds"], 3),
                            "outcome": reply["outcome"],
                        }
                else:
                    cli_outcomes[f"{what}: {reply['outcome']}"] += 1
                    if reply["outcome"].startswith("exit") and len(cli_errors) < 100:
                        cli_errors.append(f"case {index} {what}: {reply['message'][:200]}")
                if reply["outcome"] == "unexpected":
                    failures.append(
                        {
                            "case": index,
                            "check": what,
                            "seed_model": case.seed,
                            "mutations": case.mutations,
                            **{k: v for k, v in reply.items() if k != "outcome"},
                        }
                    )
                    print(
                        f"case {index}: {what}: {reply['type']} at {reply['place']}: "
                        f"{reply['message'][:160]!r} ({case.seed}: {case.mutations})",
                        file=sys.stderr,
                        flush=True,
                    )
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
            if args.progress and done % args.progress == 0:
                elapsed = time.perf_counter() - start
                print(
                    f"{done} cases, {len(failures)} failures, {elapsed:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        worker.stop()
    groups: dict[str, dict[str, Any]] = {}
    for failure in failures:
        key = f"{failure['check']}: {failure['type']} at {failure['place']}"
        group = groups.setdefault(key, {"count": 0, "first": failure})
        group["count"] += 1
    summary = {
        "command": " ".join(["python", "tools/fuzz.py", *sys.argv[1:]]),
        "seed": args.seed,
        "cases": len(indices),
        "timeout_per_case_s": args.timeout_per_case,
        "seconds": round(time.perf_counter() - start, 1),
        "seed_models": sorted(seeds),
        "outcomes": dict(sorted(outcomes.items())),
        "cli_samples": dict(sorted(cli_outcomes.items())),
        "cli_error_lines": cli_errors,
        "worker_starts": worker.starts,
        "failures": len(failures),
        "failures_by_type": dict(Counter(f["type"] for f in failures)),
        "failure_groups": groups,
        "slowest_case": slowest,
    }
    if not args.work_dir and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-per-case", type=float, default=30.0)
    parser.add_argument("--cli-every", type=int, default=100, help="0: no CLI inspect samples")
    parser.add_argument(
        "--build-every",
        type=int,
        default=1000,
        help="CLI build of every Nth case and of every (N/10)th case that loads; 0: none",
    )
    parser.add_argument("--json", help="write the summary to this file")
    parser.add_argument("--work-dir", help="where cases are written (default: a temporary folder)")
    parser.add_argument("--seed-cache", help="folder caching the exported example model")
    parser.add_argument("--no-example", action="store_true", help="hand-made seeds only")
    parser.add_argument("--only", type=int, help="run only this case index")
    parser.add_argument("--keep", help="write (and keep) the cases' files in this folder")
    parser.add_argument("--progress", type=int, default=0, help="print a line every N cases")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    summary = campaign(args)
    text = json.dumps(summary, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(
        f"{summary['cases']} cases in {summary['seconds']} s: outcomes {summary['outcomes']}; "
        f"CLI samples {summary['cli_samples']}; {summary['failures']} failures "
        f"{summary['failures_by_type']}; slowest case {summary['slowest_case'].get('case')} "
        f"({summary['slowest_case'].get('seconds')} s)"
    )
    for key, group in summary["failure_groups"].items():
        first = group["first"]
        print(f"  {group['count']} × {key}: {first['message'][:200]!r} (case {first['case']})")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
