"""Shared test helpers: small ONNX models from text, canonical graph comparison, ORT checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir

from backends.onnxruntime.reference import run_reference
from compiler.model_info import signature
from compiler.numerics import max_error, random_inputs

REPO = Path(__file__).resolve().parents[1]

HEADER = '<ir_version: 10, opset_import: ["" : 21]>'


def model_from_text(text: str) -> ir.Model:
    """An ``onnx_ir.Model`` from ONNX text; a missing ``<ir_version ...>`` header is added."""
    text = text.strip()
    if not text.startswith("<"):
        text = f"{HEADER}\n{text}"
    return ir.from_onnx_text(text)


def weights_text(weights: dict[str, np.ndarray]) -> str:
    """The ``<...>`` initializer section of ONNX text for float32/int64 arrays."""
    parts = []
    for name, array in weights.items():
        dtype = {"float32": "float", "int64": "int64"}[str(array.dtype)]
        dims = ",".join(str(d) for d in array.shape)
        values = ",".join(
            repr(float(v)) if dtype == "float" else str(int(v)) for v in array.ravel()
        )
        parts.append(f"{dtype}[{dims}] {name} = {{{values}}}")
    return "<" + ", ".join(parts) + ">"


def canonical(model: ir.Model) -> list[tuple]:
    """The graph as a list of (op, attributes, input positions) after a topological sort.

    Value names are replaced by positions, so two graphs that differ only in naming compare equal.
    """
    model = model.clone()
    ir.passes.common.TopologicalSortPass()(model)
    names: dict[int, str] = {}
    for i, value in enumerate(model.graph.inputs):
        names[id(value)] = f"in{i}"
    for _name, value in sorted(model.graph.initializers.items()):
        tensor = value.const_value
        names[id(value)] = f"const{tensor.numpy().tolist() if tensor.size <= 16 else tensor.shape}"
    result = []
    for i, node in enumerate(model.graph):
        for j, out in enumerate(node.outputs):
            names[id(out)] = f"n{i}.{j}"
        attrs = tuple(sorted((k, str(a.value)) for k, a in node.attributes.items()))
        inputs = tuple(names.get(id(v), "?") if v is not None else "" for v in node.inputs)
        result.append((node.domain, node.op_type, attrs, inputs))
    result.append(("outputs", tuple(names.get(id(v), "?") for v in model.graph.outputs)))
    return result


def seeded_inputs(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    inputs, _ = signature(model)
    return random_inputs(
        [
            (s.name, np.dtype(s.dtype), [d if isinstance(d, int) else 2 for d in s.shape])
            for s in inputs
        ],
        seed=seed,
    )


def assert_same_outputs(before: ir.Model, after: ir.Model, *, tolerance: float, seed: int = 0):
    """Runs both models in onnxruntime on the same seeded inputs and compares outputs."""
    inputs = seeded_inputs(before, seed)
    expected = run_reference(before, inputs)
    actual = run_reference(after, inputs)
    errors = max_error(actual, expected)
    assert errors, "the model has no outputs"
    assert max(errors.values()) <= tolerance, errors
    return errors


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Runs ``python -m compiler ARGS`` in a subprocess and returns the CompletedProcess."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "compiler", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def install_plugin(source: Path, site: Path) -> dict[str, str]:
    """``pip install --target site source`` (no deps, no build isolation: offline); returns the
    environment (``PYTHONPATH``) under which the installed package and the repo are importable."""
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
            "--disable-pip-version-check", "--target", str(site), str(source),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return {"PYTHONPATH": f"{site}:{REPO}"}
