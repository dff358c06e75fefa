"""PyTorch capture through torch.export and the dynamo ONNX exporter."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

from backends.onnxruntime.reference import run_reference
from compiler.errors import ModelLoadError
from compiler.frontends import load
from compiler.numerics import normalized_error


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(32)
        self.fc1 = torch.nn.Linear(32, 64)
        self.fc2 = torch.nn.Linear(64, 32)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    return Block().eval(), (torch.randn(2, 8, 32),)


def test_module_is_captured_into_onnx_ir_and_matches_torch(block):
    module, inputs = block
    model = load(module, inputs, input_names=["x"], output_names=["y"])
    assert isinstance(model, ir.Model)
    assert [v.name for v in model.graph.inputs] == ["x"]
    got = run_reference(model, {"x": inputs[0].numpy()})["y"]
    with torch.no_grad():
        want = module(*inputs).numpy()
    assert normalized_error(got, want) <= 1e-5


def test_exported_program_is_accepted(block):
    module, inputs = block
    program = torch.export.export(module, inputs)
    model = load(program)
    out = model.graph.outputs[0].name
    got = run_reference(model, {model.graph.inputs[0].name: inputs[0].numpy()})[out]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(*inputs).numpy(), rtol=1e-4, atol=1e-5)


def test_module_without_example_inputs_is_refused(block):
    with pytest.raises(ModelLoadError, match="needs example_inputs"):
        load(block[0])


def test_untraceable_module_is_reported():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
                return x + 1
            return x - 1

    with pytest.raises(ModelLoadError, match="DataDependent: torch.onnx.export"):
        load(DataDependent(), (torch.randn(3),))
