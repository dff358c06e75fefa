"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TVM_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Exports the example architectures to ONNX once per session; returns name -> path."""
    from compiler.examples import export_onnx

    root = tmp_path_factory.mktemp("exported")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = export_onnx(name, root / name / f"{name}.onnx")
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """A small MLP (MatMul, Add, Relu and an Identity) saved as one .onnx file."""
    import numpy as np
    import onnx_ir as ir

    from tests.helpers import model_from_text, weights_text

    rng = np.random.default_rng(0)
    weights = {
        name: rng.standard_normal(shape).astype(np.float32)
        for name, shape in (("w1", (8, 16)), ("b1", (16,)), ("w2", (16, 4)), ("b2", (4,)))
    }
    model = model_from_text(
        f"""
        mlp (float[2,8] x) => (float[2,4] y) {weights_text(weights)} {{
          a = MatMul(x, w1)
          b = Add(a, b1)
          c = Relu(b)
          d = Identity(c)
          e = MatMul(d, w2)
          y = Add(e, b2)
        }}
        """
    )
    path = tmp_path_factory.mktemp("tiny") / "mlp.onnx"
    ir.save(model, path)
    return path


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, tiny_onnx) -> Path:
    """``tiny_onnx`` built with the default pipeline (read-only: copy it before tampering)."""
    from compiler.builder import build

    out = tmp_path_factory.mktemp("artifacts") / "mlp.artifact"
    build(tiny_onnx, out)
    return out
