"""Numeric checks of single-op ONNX models compiled with the TVM backend.

A model is written in ONNX text (``onnx.parser``); it is compiled with
:func:`backends.tvm.compile_model`, run on seeded inputs, and every output is compared with a
reference runtime: onnxruntime (graph optimizations off, so each op runs as specified), or
onnx's reference implementation for ops onnxruntime lacks or defines differently.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from backends.tvm import compile_model

__all__ = ["check", "model_from_text", "random_feeds", "run_tvm"]


def model_from_text(text: str) -> onnx.ModelProto:
    """A checked model (shapes inferred) from ONNX text."""
    model = onnx.parser.parse_model(text)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def random_feeds(model: onnx.ModelProto, seed: int = 0, **given) -> dict[str, np.ndarray]:
    """Inputs for ``model``: floats ~ N(0, 1), integers in [-8, 8) (unsigned [0, 16)), bools
    fair coins; ``given`` ones as passed (cast to the input's dtype)."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.name in given:
            feeds[value.name] = np.asarray(given[value.name], dtype=dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.unsignedinteger):
            feeds[value.name] = rng.integers(0, 16, shape).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(-8, 8, shape).astype(dtype)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def run_tvm(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import tvm

    compiled = compile_model(ir.serde.deserialize_model(model), "llvm")
    vm = tvm.runtime.vm.VirtualMachine(compiled.executable, tvm.cpu())
    args = [tvm.runtime.tensor(feeds[name]) for name in compiled.input_names]
    result = vm["main"](*args, *[tvm.runtime.tensor(p) for p in compiled.params])
    if hasattr(result, "numpy"):
        return [result.numpy()]
    return [item.numpy() for item in result]


def run_onnxruntime(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def _onnx_reference(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]


REFERENCES = {"onnxruntime": run_onnxruntime, "onnx": _onnx_reference}


def check(
    text: str,
    *,
    reference: str = "onnxruntime",
    rtol: float = 1e-5,
    atol: float = 1e-6,
    seed: int = 0,
    **given,
) -> list[np.ndarray]:
    """Compiles the model ``text`` with TVM, runs it, and asserts every output (shape, dtype,
    values within ``rtol``/``atol``; NaN equal to NaN) matches ``reference``. Returns TVM's
    outputs."""
    model = model_from_text(text)
    feeds = random_feeds(model, seed, **given)
    with np.errstate(all="ignore"):  # inputs with inf/NaN are deliberate
        expected = REFERENCES[reference](model, feeds)
    got = run_tvm(model, feeds)
    assert len(got) == len(expected)
    for value, out, ref in zip(model.graph.output, got, expected, strict=True):
        assert out.shape == ref.shape, value.name
        assert out.dtype == ref.dtype, value.name
        if out.dtype.kind in "biu":
            np.testing.assert_array_equal(out, ref, err_msg=value.name)
        else:
            np.testing.assert_allclose(
                out.astype(np.float64),
                ref.astype(np.float64),
                rtol=rtol,
                atol=atol,
                err_msg=value.name,
            )
    return got
