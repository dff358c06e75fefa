"""Resize as separable per-axis gathers (backends/tvm/ops_resize.py), against onnxruntime.

Each case is a mode/coordinate transform TVM's own converter gets wrong or refuses; the model is
compiled with the TVM backend, run, and compared with onnxruntime (graph optimizations off).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as oh

from backends.tvm import compile_model
from backends.tvm.ops_resize import resize_taps

pytestmark = pytest.mark.tvm

FLOAT, UINT8 = TensorProto.FLOAT, TensorProto.UINT8


def _resize(shape, *, scales=None, sizes=None, roi=None, dtype=FLOAT, **attrs):
    inits = []
    names = ["x", "", "", ""]
    for index, (name, value, proto_type) in enumerate(
        (("roi", roi, FLOAT), ("scales", scales, FLOAT), ("sizes", sizes, TensorProto.INT64)),
        start=1,
    ):
        if value is not None:
            array = np.asarray(value, dtype=onnx.helper.tensor_dtype_to_np_dtype(proto_type))
            inits.append(onnx.numpy_helper.from_array(array, name))
            names[index] = name
    node = oh.make_node("Resize", names, ["y"], **attrs)
    graph = oh.make_graph(
        [node],
        "g",
        [oh.make_tensor_value_info("x", dtype, shape)],
        [oh.make_tensor_value_info("y", dtype, None)],
        initializer=inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 19)])
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def _check(model: onnx.ModelProto, x: np.ndarray, rtol=1e-5, atol=1e-5) -> None:
    import onnxruntime as ort
    import tvm

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (expected,) = session.run(None, {"x": x})
    compiled = compile_model(ir.serde.deserialize_model(model), "llvm")
    vm = tvm.runtime.vm.VirtualMachine(compiled.executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(p) for p in compiled.params])
    got = got.numpy()
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


def _x(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_linear_downsample_with_a_non_integer_scale_uses_the_given_scale():
    # 0.6 · 4 = 2.4 -> 2 pixels, but coordinates map with 1/0.6, not 4/2 (TVM's error).
    model = _resize([1, 1, 4, 4], scales=[1, 1, 0.6, 0.6], mode="linear")
    _check(model, _x((1, 1, 4, 4)))


def test_cubic_antialias_downsample_with_exclude_outside():
    model = _resize(
        [1, 2, 8, 7],
        scales=[1, 1, 0.5, 0.6],
        mode="cubic",
        antialias=1,
        cubic_coeff_a=-0.5,
        exclude_outside=1,
    )
    _check(model, _x((1, 2, 8, 7)))


def test_linear_half_pixel_symmetric_upsample():
    model = _resize(
        [1, 1, 3, 5],
        scales=[1, 1, 2.5, 1.6],
        mode="linear",
        coordinate_transformation_mode="half_pixel_symmetric",
    )
    _check(model, _x((1, 1, 3, 5)))


def test_nearest_sizes_on_axes_keep_the_aspect_ratio():
    # axes (3, 2) in that order; not_larger picks one scale for both.
    model = _resize(
        [1, 2, 6, 4],
        sizes=[7, 5],
        axes=[3, 2],
        keep_aspect_ratio_policy="not_larger",
        mode="nearest",
        nearest_mode="ceil",
        coordinate_transformation_mode="asymmetric",
    )
    _check(model, _x((1, 2, 6, 4)))


def test_tf_crop_and_resize_fills_outside_the_roi_with_the_extrapolation_value():
    model = _resize(
        [1, 1, 4, 4],
        sizes=[1, 1, 3, 3],
        roi=[0, 0, 0.4, -0.3, 1, 1, 1.2, 0.7],
        mode="linear",
        coordinate_transformation_mode="tf_crop_and_resize",
        extrapolation_value=10.0,
    )
    _check(model, _x((1, 1, 4, 4)))


def test_uint8_linear_rounds_into_range():
    model = _resize([1, 1, 3, 3], scales=[1, 1, 1.7, 1.7], mode="linear", dtype=UINT8)
    x = np.random.default_rng(0).integers(0, 256, (1, 1, 3, 3)).astype(np.uint8)
    _check(model, x, rtol=0, atol=1)  # half-way ties may round either way


def test_taps_of_a_nearest_axis_are_single_unit_weights():
    indices, weights, extrapolated = resize_taps(
        4,
        8,
        2.0,
        lambda ratio, scale: np.array([ratio <= 0.5, ratio > 0.5]),
        roi=None,
        coordinate_mode="asymmetric",
        exclude_outside=False,
    )
    assert indices[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert weights.shape == (8, 1) and np.all(weights == 1.0) and not extrapolated.any()
