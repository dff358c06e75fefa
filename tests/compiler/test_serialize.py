"""``proto_with_weights``: external weights inside the proto, the model left as it was."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from compiler.frontends import load
from compiler.serialize import proto_with_weights
from tests.passes.quantize.models import linear_model


def test_external_weights_are_copied_in_and_live_views_survive(tmp_path):
    path = tmp_path / "m.onnx"
    ir.save(linear_model(4, 32, 32), path, external_data="m.onnx.data")
    model = load(path)
    weight = model.graph.initializers["w0"]
    assert isinstance(weight.const_value, ir.ExternalTensor)
    view = weight.const_value.numpy()  # a live view of the memory map
    for _ in range(2):
        proto = proto_with_weights(model)
        (tensor,) = [t for t in proto.graph.initializer if t.name == "w0"]
        assert not tensor.external_data and tensor.raw_data
        np.testing.assert_array_equal(np.frombuffer(tensor.raw_data, np.float32), view.ravel())
    assert isinstance(weight.const_value, ir.ExternalTensor)  # the model still maps its file
    np.testing.assert_array_equal(weight.const_value.numpy(), view)
