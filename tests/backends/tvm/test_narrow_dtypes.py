"""Narrow dtypes (float8, float8e8m0, float4e2m1, int4/uint4, int2/uint2) in the TVM backend.

The casts are compared bit for bit with onnx's reference (``onnx.reference.ops.op_cast.cast_to``,
which uses ``onnx.numpy_helper`` and ml_dtypes) on every float16 value, seeded float32/float64
values over the whole range and random bit patterns (NaN, Inf, subnormals), and the midpoints
between neighbouring narrow values (ties) with their neighbours. Quantize/dequantize models run
end to end (build, artifact, runtime) against ``onnx.reference.ReferenceEvaluator``: onnxruntime
lacks blocked and 2-bit quantization.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_cast import cast_to

from backends.tvm.narrow_dtypes import NARROW_DTYPES, cast, lower_narrow_dtypes, storage_dtype
from compiler.errors import BackendError
from compiler.narrow_storage import to_storage

pytestmark = pytest.mark.tvm

_FLOAT8 = (
    ir.DataType.FLOAT8E4M3FN,
    ir.DataType.FLOAT8E4M3FNUZ,
    ir.DataType.FLOAT8E5M2,
    ir.DataType.FLOAT8E5M2FNUZ,
)
_NARROW_FLOATS = (*_FLOAT8, ir.DataType.FLOAT4E2M1, ir.DataType.FLOAT8E8M0)
_NARROW_INTS = (ir.DataType.INT4, ir.DataType.UINT4, ir.DataType.INT2, ir.DataType.UINT2)


def _np(dtype: ir.DataType) -> np.dtype:
    return np.dtype(dtype.numpy())


def _compile_casts(source: ir.DataType, shape, casts):
    """One module: input of ``source`` (storage when narrow) -> a tuple, one result per cast
    ``(target, saturate, round_mode)``. Returns a function of a numpy array."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, str(_np(storage_dtype(source)))))
    with bb.function("main", [x]):
        with bb.dataflow():
            results = [
                bb.emit(cast(bb, x, source, target, saturate=saturate, round_mode=mode))
                for target, saturate, mode in casts
            ]
            out = bb.emit_output(relax.Tuple(results))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), "llvm"), tvm.cpu())
    return lambda array: [r.numpy() for r in vm["main"](tvm.runtime.tensor(to_storage(array)))]


def _reference_cast(array: np.ndarray, target: ir.DataType, saturate: bool, mode: str):
    with np.errstate(all="ignore"):
        return to_storage(np.asarray(cast_to(array, int(target), saturate, mode)))


def _values(dtype: np.dtype) -> np.ndarray:
    """Every float16; seeded values over float32's range; random bits; narrow ties ± 1 ulp."""
    rng = np.random.default_rng(0)
    magnitudes = 10.0 ** rng.uniform(-46, 39, 4000)
    parts = [
        np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32),
        (rng.choice([-1.0, 1.0], 4000) * magnitudes).astype(np.float32),
        np.frombuffer(rng.bytes(4 * 4000), np.float32),
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e10, -1e10], np.float32),
    ]
    for target in (*_FLOAT8, ir.DataType.FLOAT4E2M1):
        codes = np.arange(16 if target == ir.DataType.FLOAT4E2M1 else 256, dtype=np.uint8)
        grid = np.unique(codes.view(_np(target)).astype(np.float64))
        grid = grid[np.isfinite(grid)]
        ties = ((grid[1:] + grid[:-1]) / 2).astype(np.float32)
        parts += [ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, -np.inf)]
    values = np.concatenate(parts)
    return values.astype(dtype) if dtype != np.float32 else values


def _all_casts_from_float():
    casts = []
    for target in (*_FLOAT8, ir.DataType.FLOAT4E2M1, *_NARROW_INTS):
        casts += [(target, True, "up"), (target, False, "up")]
    for saturate in (True, False):
        casts += [(ir.DataType.FLOAT8E8M0, saturate, mode) for mode in ("up", "down", "nearest")]
    return casts


def _check_casts(source: ir.DataType) -> None:
    values = _values(_np(source))
    casts = _all_casts_from_float()
    got = _compile_casts(source, values.shape, casts)(values)
    for (target, saturate, mode), result in zip(casts, got, strict=True):
        want = _reference_cast(values, target, saturate, mode)
        bad = np.flatnonzero(result != want)
        assert not bad.size, (
            f"{source.name} -> {target.name} saturate={saturate} round_mode={mode}: "
            f"{bad.size} codes differ, e.g. {values[bad[:4]]} -> {result[bad[:4]]}, "
            f"expected {want[bad[:4]]}"
        )


def test_casts_from_float32_match_onnx_bit_for_bit():
    _check_casts(ir.DataType.FLOAT)


@pytest.mark.slow
@pytest.mark.parametrize("source", [ir.DataType.FLOAT16, ir.DataType.DOUBLE])
def test_casts_from_float16_and_double_match_onnx_bit_for_bit(source):
    _check_casts(source)


@pytest.mark.parametrize("source", _NARROW_FLOATS)
def test_every_narrow_float_code_decodes_exactly(source):
    codes = np.arange(16 if source == ir.DataType.FLOAT4E2M1 else 256, dtype=np.uint8)
    values = codes.view(_np(source))
    targets = [ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.INT8]
    finite = np.isfinite(values.astype(np.float32)) & (np.abs(values.astype(np.float32)) < 127)
    got = _compile_casts(source, codes.shape, [(t, True, "up") for t in targets])(values)
    for target, result in zip(targets, got, strict=True):
        want = values.astype(_np(target))
        if target == ir.DataType.INT8:  # defined for the values int8 holds only
            result, want = result[finite], want[finite]
        np.testing.assert_array_equal(result, want, err_msg=f"{source.name} -> {target.name}")


def test_narrow_integers_wrap_and_truncate_as_onnx():
    """From floats: truncated toward zero, then wrapped (NaN, Inf, |x| >= 2**31: 0); from
    int32: wrapped; to float, to int8 and between narrow dtypes: exact."""
    floats = np.array([2.7, -2.7, 7.5, -8.5, 8.0, -9.0, 15.9, 1e10, -1e10, np.inf, np.nan, -0.0])
    floats = floats.astype(np.float32)
    casts = [(t, True, "up") for t in _NARROW_INTS]
    for result, (target, *_) in zip(
        _compile_casts(ir.DataType.FLOAT, floats.shape, casts)(floats), casts, strict=True
    ):
        np.testing.assert_array_equal(result, _reference_cast(floats, target, True, "up"))
    ints = np.arange(-20, 20, dtype=np.int32)
    for result, (target, *_) in zip(
        _compile_casts(ir.DataType.INT32, ints.shape, casts)(ints), casts, strict=True
    ):
        np.testing.assert_array_equal(result, _reference_cast(ints, target, True, "up"))
    for source in _NARROW_INTS:
        values = np.arange(-20, 20).astype(_np(source))
        targets = [ir.DataType.FLOAT, ir.DataType.INT8, ir.DataType.FLOAT8E4M3FN, *_NARROW_INTS]
        got = _compile_casts(source, values.shape, [(t, True, "up") for t in targets])(values)
        for target, result in zip(targets, got, strict=True):
            want = _reference_cast(values.astype(np.float32), target, True, "up")
            np.testing.assert_array_equal(result, want, err_msg=f"{source.name}->{target.name}")


# ---------------------------------------------------------------------------------------------
# Quantization and the artifact boundary, end to end


def _build_and_run(model: onnx.ModelProto, feeds, tmp_path) -> dict[str, np.ndarray]:
    from compiler.builder import build
    from compiler.runtime import load

    build(ir.serde.deserialize_model(model), tmp_path / "artifact", verify=False, latency_runs=0)
    return load(tmp_path / "artifact")(feeds)


def _assert_same(got: dict[str, np.ndarray], model: onnx.ModelProto, feeds) -> None:
    want = ReferenceEvaluator(model).run(None, feeds)
    for value, expected in zip(model.graph.output, want, strict=True):
        result = got[value.name]
        assert result.dtype == expected.dtype, value.name
        np.testing.assert_array_equal(result.astype(np.float32), expected.astype(np.float32))


_RNG = np.random.default_rng(3)
_X = (_RNG.standard_normal((3, 10)) * 40).astype(np.float32)


@pytest.mark.parametrize(
    ("dtype", "attrs", "scale_shape"),
    [
        (TensorProto.INT4, {"axis": 1, "block_size": 4}, (3, 3)),  # blocks, remainder of 2
        (TensorProto.UINT8, {"axis": 0, "block_size": 2}, (2, 10)),
        (TensorProto.UINT2, {"axis": 0}, (3,)),
        (TensorProto.FLOAT8E4M3FN, {"saturate": 0}, ()),
        (TensorProto.FLOAT8E5M2, {"axis": 1, "block_size": 5}, (3, 2)),
        (TensorProto.FLOAT4E2M1, {}, ()),
    ],
)
def test_quantize_then_dequantize_matches_onnx_reference(tmp_path, dtype, attrs, scale_shape):
    """Q (to ``dtype``) and DQ (back) in one model: both outputs, the quantized one returned
    to the caller in its ONNX dtype (ml_dtypes) through the runtime's boundary conversion."""
    scale = (_RNG.uniform(0.5, 3.0, scale_shape)).astype(np.float32)
    zero_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    floating = dtype in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2, TensorProto.FLOAT4E2M1)
    zero = np.zeros(scale_shape) if floating else _RNG.integers(0, 2, scale_shape)
    zero_tensor = onnx.numpy_helper.from_array(np.asarray(zero).astype(zero_dtype), "zero")
    graph = oh.make_graph(
        [
            oh.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], **attrs),
            oh.make_node(
                "DequantizeLinear",
                ["q", "scale", "zero"],
                ["y"],
                **{k: v for k, v in attrs.items() if k != "saturate"},
            ),
        ],
        "g",
        [
            oh.make_tensor_value_info("x", TensorProto.FLOAT, _X.shape),
            oh.make_tensor_value_info("scale", TensorProto.FLOAT, scale_shape),
        ],
        [
            oh.make_tensor_value_info("q", dtype, _X.shape),
            oh.make_tensor_value_info("y", TensorProto.FLOAT, _X.shape),
        ],
        initializer=[zero_tensor],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 25)])
    onnx.checker.check_model(model)
    feeds = {"x": _X, "scale": scale}
    got = _build_and_run(model, feeds, tmp_path)
    assert got["q"].dtype == zero_dtype
    _assert_same(got, model, feeds)


def test_narrow_inputs_and_weights_cross_the_artifact(tmp_path):
    """An int4 weight large enough to be stored in the artifact (not inlined), dequantized by
    blocks with a runtime float8 input cast next to it."""
    weight = _RNG.integers(-8, 8, (64, 6)).astype(ml_dtypes.int4)
    scale = _RNG.uniform(0.1, 1.0, (16, 6)).astype(np.float32)
    graph = oh.make_graph(
        [
            oh.make_node("DequantizeLinear", ["w", "scale"], ["y"], axis=0, block_size=4),
            oh.make_node("Cast", ["f8"], ["f"], to=TensorProto.FLOAT),
        ],
        "g",
        [oh.make_tensor_value_info("f8", TensorProto.FLOAT8E4M3FNUZ, (5,))],
        [
            oh.make_tensor_value_info("y", TensorProto.FLOAT, (64, 6)),
            oh.make_tensor_value_info("f", TensorProto.FLOAT, (5,)),
        ],
        initializer=[
            onnx.numpy_helper.from_array(weight, "w"),
            onnx.numpy_helper.from_array(scale, "scale"),
        ],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 25)])
    onnx.checker.check_model(model)
    f8 = np.array([0.5, -3, 240, np.nan, 1e-3], np.float32).astype(ml_dtypes.float8_e4m3fnuz)
    got = _build_and_run(model, {"f8": f8}, tmp_path)
    _assert_same(got, model, {"f8": f8})


# ---------------------------------------------------------------------------------------------
# The rewrite


def test_the_rewrite_retypes_narrow_values_to_storage():
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 25]>
        g (float[4] x, int4[4] w) => (float8e5m2[4] y, int4[4] v) {
          y = Cast <to = 19> (x)
          v = Identity (w)
        }
        """
    )
    assert lower_narrow_dtypes(model)
    assert [n.op_type for n in model.graph] == ["NarrowCast", "Identity"]
    assert [v.dtype for v in model.graph.outputs] == [ir.DataType.UINT8, ir.DataType.INT8]
    assert model.graph.inputs[1].dtype == ir.DataType.INT8


def test_the_rewrite_leaves_models_without_narrow_dtypes_alone():
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 21]>
        g (float[4] x, float s, uint8 z) => (uint8[4] y) {
          y = QuantizeLinear (x, s, z)
        }
        """
    )
    assert not lower_narrow_dtypes(model)
    assert [n.op_type for n in model.graph] == ["QuantizeLinear"]


def test_arithmetic_on_a_narrow_dtype_is_refused_naming_the_node():
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 25]>
        g (float8e4m3fn[4] a, float8e4m3fn[4] b) => (float8e4m3fn[4] c) {
          c = Add (a, b)
        }
        """
    )
    model.graph.node(0).name = "add0"
    with pytest.raises(BackendError, match=r"node 'add0' \(Add\): .*narrow dtypes"):
        lower_narrow_dtypes(model)


def test_every_narrow_dtype_has_a_one_byte_storage():
    assert {storage_dtype(d).itemsize for d in NARROW_DTYPES} == {1}
