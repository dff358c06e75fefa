"""``cast``: large weights stored in 16 bits, computed in float32, in both runtimes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common
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


def _attention_like(
    rows: int = 8, k: int = 32, scale: float = 1.0, rescale: bool = False
) -> ir.Model:
    """``y = softmax(LN(x·W1))·W2`` (a normalization and a softmax between matmuls), with W1
    multiplied by ``scale``; ``rescale``: ``y = (x·W1 / scale)·W2`` instead."""
    rng = np.random.default_rng(0)
    x = ir.Value(name="x", shape=ir.Shape([1, rows, k]), type=ir.TensorType(ir.DataType.FLOAT))
    arrays = {
        "w1": (rng.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32) * scale,
        "gamma": np.ones(k, np.float32),
        "beta": np.zeros(k, np.float32),
        "w2": (rng.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32),
    }
    inits = {}
    for name, array in arrays.items():
        inits[name] = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        inits[name].shape, inits[name].dtype = ir.Shape(array.shape), ir.DataType.FLOAT
    mm1 = ir.node("MatMul", [x, inits["w1"]], name="mm1")
    if rescale:
        inverse = ir.Value(name="inverse", const_value=ir.tensor(np.float32(1 / scale)))
        inverse.shape, inverse.dtype = ir.Shape([]), ir.DataType.FLOAT
        inits["inverse"] = inverse
        middle = [ir.node("Mul", [mm1.outputs[0], inverse], name="rescale")]
    else:
        ln = ir.node(
            "LayerNormalization", [mm1.outputs[0], inits["gamma"], inits["beta"]], name="ln"
        )
        middle = [ln, ir.node("Softmax", [ln.outputs[0]], attributes={"axis": -1}, name="softmax")]
    mm2 = ir.node("MatMul", [middle[-1].outputs[0], inits["w2"]], name="mm2")
    mm2.outputs[0].name = "y"
    graph = ir.Graph(
        [x], [mm2.outputs[0]], nodes=[mm1, *middle, mm2], initializers=list(inits.values()),
        opset_imports={"": 18},
    )  # fmt: skip
    model = ir.Model(graph, ir_version=10)
    ir.passes.common.ShapeInferencePass()(model)
    return model


def _node_types(model: ir.Model) -> dict[str, str]:
    return {n.name: n.outputs[0].dtype.name for n in model.graph if n.op_type != "Cast"}


def test_fp16_activations_keep_policy_ops_and_io_in_float32():
    model = _attention_like()
    x = {"x": correlated_inputs(8, 32)[None]}
    cast = _cast(model.clone(), "cast(dtype=fp16,activations=true)")
    assert _node_types(cast) == {
        "mm1": "FLOAT16", "ln": "FLOAT", "softmax": "FLOAT", "mm2": "FLOAT16",
    }  # fmt: skip
    assert cast.graph.inputs[0].dtype.name == "FLOAT" == cast.graph.outputs[0].dtype.name
    expected, got = run_reference(model, x)["y"], run_reference(cast, x)["y"]
    assert 0 < max_error({"y": got}, {"y": expected})["y"] < 2**-8
    summary, *layers = cast_records(cast)
    assert summary["mode"] == "activations" and summary["kept_float32"] == []
    assert [r["node"] for r in layers] == ["mm1", "mm2"]
    assert all(r["local_error"] >= 0 for r in layers)


def test_fp16_activations_keep_overflowing_nodes_in_float32():
    from compiler.calibration import Calibration
    from compiler.pass_manager import PassContext
    from passes.precision.activations import cast_activations

    model = _attention_like(scale=4e4, rescale=True)  # x·W1 reaches ~3e5: beyond fp16's 65504
    x = {"x": correlated_inputs(8, 32)[None]}
    context = PassContext(calibration=Calibration([x], "one batch"))
    passes = build_passes("cast(dtype=fp16,activations=true)")
    cast = PassManager(passes, context=context).run(model.clone()).model
    summary = cast_records(cast)[0]
    kept = {entry["node"]: entry["reason"] for entry in summary["kept_float32"]}
    assert set(kept) == {"mm1", "rescale"} and "overflow" in kept["mm1"]  # writer and reader
    assert summary["ranges_from"] == "calibration"
    got, expected = run_reference(cast, x)["y"], run_reference(model, x)["y"]
    assert np.isfinite(got).all()
    assert max_error({"y": got}, {"y": expected})["y"] < 2**-8
    assert float(kept["mm1"].split()[-1]) > 65504  # the peak it saw
    # Without the check, x·W1 is computed in fp16 and overflows to inf.
    unguarded = cast_activations(model.clone(), set())
    (mm1,) = [n for n in unguarded.graph if n.name == "mm1"]
    assert mm1.outputs[0].dtype == ir.DataType.FLOAT16
    from backends.onnxruntime.reference import ReferenceSession

    peak = ReferenceSession(unguarded, extra_outputs=[mm1.outputs[0].name]).run(x)
    assert np.isinf(peak[mm1.outputs[0].name]).any()


def test_fp16_activations_need_fp16_and_roll_back_by_layer():
    from compiler.accuracy import AccuracyBudget

    with pytest.raises(Exception, match="bf16"):
        CastPass(dtype="bf16", activations=True)
    model = _attention_like()
    budget = AccuracyBudget([{"x": correlated_inputs(8, 32, seed=s)[None]} for s in range(2)], 1e-9)
    result = PassManager(build_passes("cast(dtype=fp16,activations=true)"), accuracy=budget).run(
        model.clone()
    )
    first, *retries = budget.records
    assert first.rolled_back and retries  # over budget: retried with its worst layer in float32
    assert retries[0].kept_in_float and retries[0].kept_in_float[0] in {"mm1", "mm2"}
    assert result.applied == [("cast", False)]  # nothing fits 1e-9: the model is unchanged


@pytest.mark.tvm
def test_tvm_builds_fp16_activations_and_matches_onnxruntime(tmp_path):
    from compiler.builder import build

    model = _attention_like()
    result = build(model, tmp_path / "fp16", passes="cast(dtype=fp16,activations=true)")
    assert result.report["verification"]["max_error"] <= 2**-8


def test_fp16_activations_name_unnamed_nodes_first():
    model = _attention_like()
    for node in model.graph:
        node.name = ""
    cast = _cast(model, "cast(dtype=fp16,activations=true)")
    kinds = {n.op_type: n.outputs[0].dtype.name for n in cast.graph if n.op_type != "Cast"}
    assert kinds == {"MatMul": "FLOAT16", "LayerNormalization": "FLOAT", "Softmax": "FLOAT"}
    assert all(n.name for n in cast.graph)
