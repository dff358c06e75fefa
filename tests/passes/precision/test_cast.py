"""``cast``: large weights stored in 16 bits, computed in float32, in both runtimes."""

from __future__ import annotations

import numpy as np
import pytest

from backends.onnxruntime.reference import run_reference
from compiler.numerics import max_error
from compiler.pass_manager import PassManager
from compiler.pipeline import build_passes
from passes.precision import CastPass, cast_records
from tests.passes.quantize.models import correlated_inputs, linear_model


def _cast(model, text):
    return PassManager(build_passes(text)).run(model).model


@pytest.mark.parametrize(("dtype", "bound"), [("bf16", 2**-8), ("fp16", 2**-10)])
def test_weights_are_stored_in_16_bits_and_outputs_stay_float32(dtype, bound):
    model = linear_model(8, 64, 64, layers=2)
    x = {"x": correlated_inputs(8, 64)[None]}
    expected = run_reference(model, x)["y"]
    cast = _cast(model.clone(), f"cast(dtype={dtype})")
    stored = {str(v.const_value.dtype) for v in cast.graph.initializers.values()}
    assert stored == {"BFLOAT16" if dtype == "bf16" else "FLOAT16"}
    assert [n.op_type for n in cast.graph].count("Cast") == 2
    assert cast.graph.outputs[0].dtype.name == "FLOAT"
    got = run_reference(cast, x)["y"]
    assert got.dtype == np.float32
    assert 0 < max_error({"y": got}, {"y": expected})["y"] < 8 * bound
    assert [r["dtype"] for r in cast_records(cast)] == [dtype, dtype]


def test_small_tensors_and_fp16_overflow_stay_float32():
    model = linear_model(4, 64, 64)
    big = model.graph.initializers["w0"]
    array = big.const_value.numpy().copy()
    array[0, 0] = 1e5  # beyond fp16's 65504
    big.const_value = type(big.const_value)(array, name="w0")
    cast = _cast(model.clone(), "cast(dtype=fp16)")
    assert cast.graph.initializers["w0"].const_value.dtype.name == "FLOAT"
    assert cast_records(cast) == [{"weight": "w0", "kept": "float32", "reason": "overflow"}]
    untouched = _cast(linear_model(4, 16, 16), "cast(min_size=1024)")  # 256 elements
    assert not cast_records(untouched)


@pytest.mark.tvm
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_tvm_keeps_16_bit_weights_and_matches_onnxruntime(dtype):
    import tvm
    from tvm import relax

    from backends.tvm import compile_model

    model = _cast(linear_model(8, 64, 64, layers=2), f"cast(dtype={dtype})")
    x = {"x": correlated_inputs(8, 64)[None]}
    compiled = compile_model(model)
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x["x"]), *[tvm.runtime.tensor(p) for p in compiled.params])
    assert max_error({"y": got.numpy()}, run_reference(model, x))["y"] <= 1e-6
    assert {str(p.dtype) for p in compiled.params} == {"bfloat16" if dtype == "bf16" else "float16"}


def test_min_size_is_checked():
    with pytest.raises(Exception, match="min_size"):
        CastPass(min_size=0)
