"""Small linear models with real weights for the quantization tests."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common


def _init(graph_inits: list, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape, value.dtype = ir.Shape(array.shape), ir.DataType.from_numpy(array.dtype)
    graph_inits.append(value)  # registered when the graph is made
    return value


def linear_model(
    rows: int, k: int, n: int, *, form: str = "matmul", seed: int = 0, layers: int = 1
) -> ir.Model:
    """``y = x · W (+ b)`` stacked ``layers`` times (ReLU between) for ``x`` ``[1, rows, k]``.

    ``form``: ``matmul`` (W ``[k, n]``), ``gemm`` (2-D x, W ``[n, k]`` with transB and a bias),
    or ``tied`` (``MatMul(x, Transpose(E))`` with E ``[n, k]`` also read by a ``Gather``).
    With several layers, n must equal k.
    """
    rng = np.random.default_rng(seed)
    shape = [rows, k] if form == "gemm" else [1, rows, k]
    x = ir.Value(name="x", shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT))
    inits: list[ir.Value] = []
    nodes: list[ir.Node] = []
    inputs = [x]
    current = x
    for layer in range(layers):
        weight = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        weight[:, : k // 8] *= 4.0  # a few large input channels, like real activations see
        if form == "matmul":
            w = _init(inits, f"w{layer}", np.ascontiguousarray(weight.T))
            node = ir.node("MatMul", [current, w], name=f"linear{layer}")
        elif form == "gemm":
            w = _init(inits, f"w{layer}", weight)
            b = _init(inits, f"b{layer}", rng.standard_normal(n).astype(np.float32))
            node = ir.node("Gemm", [current, w, b], attributes={"transB": 1}, name=f"gemm{layer}")
        else:
            table = _init(inits, "embedding", weight)
            ids = ir.Value(
                name="ids", shape=ir.Shape([1, 4]), type=ir.TensorType(ir.DataType.INT64)
            )
            inputs.append(ids)
            gather = ir.node("Gather", [table, ids], name="embed")
            transpose = ir.node("Transpose", [table], attributes={"perm": [1, 0]}, name="head_t")
            node = ir.node("MatMul", [current, transpose.outputs[0]], name="lm_head")
            nodes += [gather, transpose]
            gather.outputs[0].name = "embedded"
        nodes.append(node)
        current = node.outputs[0]
        if layer + 1 < layers:
            relu = ir.node("Relu", [current], name=f"relu{layer}")
            relu.outputs[0].name = f"relu{layer}"
            nodes.append(relu)
            current = relu.outputs[0]
    current.name = "y"
    outputs = [current] + ([nodes[0].outputs[0]] if form == "tied" else [])
    graph = ir.Graph(inputs, outputs, nodes=nodes, initializers=inits, opset_imports={"": 18})
    model = ir.Model(graph, ir_version=10)
    ir.passes.common.ShapeInferencePass()(model)
    return model


def correlated_inputs(rows: int, k: int, *, seed: int = 1) -> np.ndarray:
    """Activations with correlated channels and a few outliers (as transformers produce).

    Every seed draws rows from the same distribution (the channel mixing is fixed).
    """
    mix = np.random.default_rng(12345).standard_normal((k, k)).astype(np.float32) / np.sqrt(k)
    x = np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32) @ mix
    x[:, : k // 8] *= 6.0
    return x.astype(np.float32)
