"""Frontends: capture a model into the one IR, ``onnx_ir.Model``.

* ONNX files (:mod:`compiler.frontends.onnx_file`): external data stays memory-mapped; external
  data that leaves the model's folder or goes through a symbolic link is refused.
* PyTorch modules and ``torch.export.ExportedProgram`` (:mod:`compiler.frontends.torch_module`):
  through ``torch.onnx.export(..., dynamo=True)`` straight into ``onnx_ir`` (no protobuf on disk).
"""

from __future__ import annotations

import os
from typing import Any

import onnx_ir as ir

from compiler.errors import ModelLoadError

__all__ = ["load"]


def load(
    source: Any, example_inputs: tuple[Any, ...] | None = None, **export_options: Any
) -> ir.Model:
    """Returns ``source`` as an ``onnx_ir.Model``.

    Args:
        source: a path to an ``.onnx`` file, an ``onnx_ir.Model`` (returned as is), a
            ``torch.nn.Module`` or a ``torch.export.ExportedProgram``.
        example_inputs: positional example inputs; required for a ``torch.nn.Module``.
        export_options: passed to :func:`compiler.frontends.torch_module.load_torch`
            (``input_names``, ``output_names``, ``dynamic_shapes``).
    """
    if isinstance(source, ir.Model):
        return source
    if isinstance(source, (str, os.PathLike)):
        from compiler.frontends.onnx_file import load_onnx

        return load_onnx(source)
    module_name = type(source).__module__
    if module_name.startswith("torch") or _is_torch_module(source):
        from compiler.frontends.torch_module import load_torch

        return load_torch(source, example_inputs, **export_options)
    raise ModelLoadError(
        f"cannot load a model from a {type(source).__name__}: expected a path to an .onnx file, "
        "an onnx_ir.Model, a torch.nn.Module or a torch.export.ExportedProgram"
    )


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(obj, (torch.nn.Module, torch.export.ExportedProgram))
