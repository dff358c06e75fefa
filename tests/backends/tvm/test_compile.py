"""The TVM backend: target policy, unsupported ops named by node, and compiled numerics."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from backends.onnxruntime.reference import run_reference
from backends.tvm import compile_model, host_target, resolve_target, unsupported_nodes
from compiler.errors import BackendError
from compiler.numerics import max_error
from tests.helpers import model_from_text, seeded_inputs

pytestmark = pytest.mark.tvm

# A training loss: out of scope for the backend (see the conformance issue), valid ONNX that
# onnxruntime runs.
UNSUPPORTED = """
g (float[4,3] scores, int64[4] labels) => (float loss) {
  probs = Softmax <axis = 1> (scores)
  loss = NegativeLogLikelihoodLoss <reduction = "mean"> (probs, labels)
}
"""


def _run_executable(compiled, inputs):
    import tvm

    vm = tvm.runtime.vm.VirtualMachine(compiled.executable, tvm.cpu())
    args = [tvm.runtime.tensor(inputs[name]) for name in compiled.input_names]
    params = [tvm.runtime.tensor(p) for p in compiled.params]
    out = vm["main"](*args, *params)
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def test_host_target_names_this_cpu():
    from tvm.target import codegen

    target = host_target()
    assert target["kind"] == "llvm"
    assert "mcpu" not in target or codegen.llvm_is_valid_cpu(target["mcpu"], target["mtriple"])
    assert resolve_target("llvm") == target


def test_cuda_target_names_an_architecture():
    target = resolve_target("cuda")
    assert target["kind"] == "cuda" and target["arch"].startswith("sm_")
    assert target["host"]["kind"] == "llvm"


def test_unknown_target_is_refused():
    with pytest.raises(BackendError, match="unknown target 'tpu'"):
        resolve_target("tpu")


def test_unsupported_op_is_reported_with_the_node_name():
    model = model_from_text(UNSUPPORTED)
    model.graph.node(1).name = "loss_node"
    assert [n.op_type for n in unsupported_nodes(model)] == ["NegativeLogLikelihoodLoss"]
    with pytest.raises(
        BackendError, match=r"node 'loss_node' uses op NegativeLogLikelihoodLoss, which the TVM"
    ):
        compile_model(model, "llvm", model_name="loss.onnx")


def test_compiled_mlp_matches_onnxruntime(tiny_onnx):
    model = ir.load(tiny_onnx)
    inputs = seeded_inputs(model)
    compiled = compile_model(model, "llvm")
    assert compiled.input_names == ["x"]
    # Weights above INLINE_MAX_ELEMENTS stay parameters; the small ones became constants.
    assert [p.shape for p in compiled.params] == [(8, 16)]
    assert all(isinstance(p, np.ndarray) for p in compiled.params)
    got = _run_executable(compiled, inputs)
    errors = max_error({"y": got}, run_reference(model, inputs))
    assert errors["y"] <= 1e-5


def test_compile_does_not_touch_the_model(tiny_onnx):
    model = ir.load(tiny_onnx)
    before = ir.to_proto(model).SerializeToString()
    compile_model(model, "llvm")
    assert ir.to_proto(model).SerializeToString() == before


def test_cuda_code_generation_works_without_a_gpu(tiny_onnx, tmp_path):
    compiled = compile_model(ir.load(tiny_onnx), "cuda")
    compiled.export_library(tmp_path / "model.so")
    assert (tmp_path / "model.so").stat().st_size > 0

    def kinds(module):
        return [module.kind] + [k for sub in module.imports for k in kinds(sub)]

    assert "cuda" in kinds(compiled.executable.mod)
