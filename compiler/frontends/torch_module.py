"""Captures PyTorch models into ``onnx_ir`` through ``torch.export`` and the dynamo ONNX exporter.

``torch.onnx.export(..., dynamo=True)`` traces the module with ``torch.export`` (FX) and returns an
``ONNXProgram`` whose ``.model`` is already an ``onnx_ir.Model``: no protobuf is written or parsed.
FX is the capture route, not a second IR.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import onnx_ir as ir

from compiler.errors import ModelLoadError
from compiler.quiet import quiet_loggers

__all__ = ["DEFAULT_OPSET", "load_torch"]

DEFAULT_OPSET = 18  # the exporter's best-covered opset; passes may raise it when they need to


def load_torch(
    module: Any,
    example_inputs: tuple[Any, ...] | None = None,
    *,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_shapes: Any = None,
    opset_version: int = DEFAULT_OPSET,
) -> ir.Model:
    """Returns the ONNX IR of ``module`` (a ``torch.nn.Module`` or ``ExportedProgram``).

    Preconditions: ``module`` is exportable by ``torch.export`` (no data-dependent control flow);
    for an ``nn.Module``, ``example_inputs`` gives one positional tuple of example tensors.
    """
    import torch

    if isinstance(module, torch.nn.Module):
        if example_inputs is None:
            raise ModelLoadError(
                f"{type(module).__name__}: a torch.nn.Module needs example_inputs to be captured"
            )
        module = module.eval()
    elif not isinstance(module, torch.export.ExportedProgram):
        raise ModelLoadError(f"{type(module).__name__} is not a torch.nn.Module or ExportedProgram")
    args = tuple(example_inputs) if example_inputs is not None else ()
    # The exporter prints progress lines and warnings of its own: keep the user's console clean.
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        quiet_loggers("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"),
    ):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset_version,
                optimize=True,
                verbose=False,
            )
        except Exception as e:
            name = type(module).__name__
            raise ModelLoadError(f"{name}: torch.onnx.export(dynamo=True) failed: {e}") from e
    model: ir.Model = program.model
    model.producer_name = "compiler (torch.onnx dynamo)"
    return model
