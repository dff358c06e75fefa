"""compiler: makes neural networks smaller and faster.

Capture (ONNX file or PyTorch module) -> ``onnx_ir.Model`` -> passes -> TVM artifact.

The top-level names are imported lazily so that ``import compiler.runtime`` (what a deployment
needs) does not pull in the frontends, passes or backends.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": "compiler.frontends",
    "build": "compiler.builder",
    "BuildResult": "compiler.builder",
    "PassManager": "compiler.pass_manager",
    "PassRegistry": "compiler.pass_registry",
    "default_registry": "compiler.pass_registry",
    "register_pass": "compiler.pass_registry",
    "parse_pipeline": "compiler.pipeline",
    "CompilerError": "compiler.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'compiler' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
