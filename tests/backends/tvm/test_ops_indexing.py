"""backends/tvm/ops_indexing.py: ReverseSequence, TensorScatter, TfIdfVectorizer, Split,
compiled with TVM and compared with onnxruntime (onnx's reference for TensorScatter)."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

from backends.tvm import compile_model
from compiler.errors import BackendError
from tests.backends.tvm.op_testing import check, model_from_text

pytestmark = pytest.mark.tvm


def _text(opset: int, body: str) -> str:
    return f'<ir_version: {onnx.IR_VERSION}, opset_import: ["" : {opset}]>\n{body}'


CASES = {
    "split_with_empty_parts": (
        _text(
            13,
            "g (float[5,2] x) => (float[0,2] a, float[3,2] b, float[0,2] c, float[2,2] d)"
            " <int64[4] parts = {0, 3, 0, 2}> { a, b, c, d = Split <axis = 0> (x, parts) }",
        ),
        "onnxruntime",
        {},
    ),
    "reverse_sequence_time_major": (
        _text(
            10,
            "g (float[5,3,2] x) => (float[5,3,2] y) <int64[3] lens = {5, 0, 3}>"
            " { y = ReverseSequence <batch_axis = 1, time_axis = 0> (x, lens) }",
        ),
        "onnxruntime",
        {},
    ),
    "tensor_scatter_circular": (
        _text(
            24,
            "g (float[2,3,5,4] past, float[2,3,3,4] new, int64[2] at) => (float[2,3,5,4] y)"
            ' { y = TensorScatter <mode = "circular"> (past, new, at) }',
        ),
        "onnx",
        {"at": [3, 1]},
    ),
    "tfidf_uni_and_bigrams_with_skips": (
        _text(
            9,
            "g (int32[2,7] x) => (float[2,6] y) { y = TfIdfVectorizer <max_gram_length = 2,"
            ' min_gram_length = 1, max_skip_count = 2, mode = "TFIDF", ngram_counts = [0, 3],'
            " ngram_indexes = [0, 1, 2, 3, 4, 5], pool_int64s = [1, 2, 3, 1, 2, 2, 3, 3, 1],"
            " weights = [1.0, 0.5, 2.0, 1.5, 3.0, 0.25]> (x) }",
        ),
        "onnxruntime",
        {"x": [[1, 2, 3, 1, 2, 2, 3], [3, 1, 1, 2, 3, 3, 1]]},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_reference(name):
    text, reference, given = CASES[name]
    check(text, reference=reference, **given)


@pytest.mark.parametrize(
    ("axis", "index", "out"), [(0, 2, "4, 5"), (1, -1, "3, 5"), (-1, 0, "3, 4")]
)
def test_gather_of_one_constant_position_is_a_slice(axis, index, out):
    check(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3, 4, 5] x) => (float[{out}] y) <int64 i = {{{index}}}> {{
            y = Gather<axis={axis}>(x, i)
        }}
        """
    )


def test_gather_of_a_constant_position_outside_the_axis_names_the_node():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3, 4] x) => (float[4] y) <int64 i = {0}> { y = Gather<axis=0>(x, i) }
        """
    )
    model.graph.initializer[0].int64_data[:] = [7]
    with pytest.raises(BackendError, match="index 7 is outside an axis of 3"):
        compile_model(ir.serde.deserialize_model(model))
