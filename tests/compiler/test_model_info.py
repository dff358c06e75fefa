from __future__ import annotations

import onnx_ir as ir

from compiler.model_info import model_stats, node_flops, signature
from tests.helpers import model_from_text


def test_stats_of_the_tiny_mlp(tiny_onnx):
    model = ir.load(tiny_onnx)
    stats = model_stats(model)
    assert stats.nodes == 6 and stats.ops["MatMul"] == 2
    assert stats.parameters == 8 * 16 + 16 + 16 * 4 + 4
    assert stats.parameter_bytes == {"float": 4 * stats.parameters}
    # x[2,8] @ w1[8,16] and relu[2,16] @ w2[16,4]; the text model declares no inner shapes.
    assert stats.flops_unknown == 2
    from passes.cleanup import ShapeInferencePass

    ShapeInferencePass()(model)
    stats = model_stats(model)
    assert stats.flops == 2 * 2 * 16 * 8 + 2 * 2 * 4 * 16 and stats.flops_unknown == 0
    inputs, _outputs = signature(model)
    assert [(s.name, s.dtype, s.shape) for s in inputs] == [("x", "float32", (2, 8))]


def test_gemm_and_conv_flops():
    model = model_from_text(
        """
        g (float[8,4] a, float[6,4] b, float[1,3,10,10] x, float[5,3,3,3] w)
          => (float[4,6] c, float[1,5,8,8] y) {
          c = Gemm <transA = 1, transB = 1> (a, b)
          y = Conv(x, w)
        }
        """
    )
    from passes.cleanup import ShapeInferencePass

    ShapeInferencePass()(model)
    gemm, conv = model.graph.node(0), model.graph.node(1)
    assert node_flops(gemm) == 2 * (4 * 6) * 8
    assert node_flops(conv) == 2 * (5 * 8 * 8) * (3 * 3 * 3)
