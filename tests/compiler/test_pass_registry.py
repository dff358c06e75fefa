from __future__ import annotations

import sys
import textwrap
from importlib import metadata
from typing import Literal

import onnx_ir as ir
import pytest

from compiler.errors import PipelineError
from compiler.pass_registry import PassRegistry, default_registry, options_of


class TagPass(ir.passes.InPlacePass):
    """Tags the graph's doc string."""

    name = "tag"

    def __init__(self, *, text: str = "x", times: int = 1, mode: Literal["a", "b"] = "a") -> None:
        super().__init__()
        self.text, self.times, self.mode = text, times, mode

    def call(self, model):
        model.graph.doc_string = self.text * self.times
        return ir.passes.PassResult(model, True)


def test_options_are_read_from_the_signature():
    options = options_of(TagPass)
    assert list(options) == ["text", "times", "mode"]
    assert options["times"].type is int and options["times"].default == 1
    assert options["mode"].choices == ("a", "b")


def test_registry_creates_with_converted_options():
    registry = PassRegistry()
    registry.register(TagPass)
    created = registry.create("tag", times="3", mode="b")
    assert created.times == 3 and created.mode == "b"
    with pytest.raises(PipelineError, match="must be one of"):
        registry.create("tag", mode="c")


def test_registry_refuses_bad_names_and_clashes():
    registry = PassRegistry()

    class Bad(ir.passes.InPlacePass):
        name = "Not_Kebab"

        def call(self, model):
            return ir.passes.PassResult(model, False)

    with pytest.raises(TypeError, match="kebab-case"):
        registry.register(Bad)
    registry.register(TagPass)

    class Other(TagPass):
        pass

    with pytest.raises(ValueError, match="already taken"):
        registry.register(Other)


def test_options_need_defaults_and_scalar_types():
    class NoDefault(ir.passes.InPlacePass):
        name = "no-default"

        def __init__(self, *, x: int) -> None:
            super().__init__()

        def call(self, model):
            return ir.passes.PassResult(model, False)

    with pytest.raises(TypeError, match="needs a default"):
        options_of(NoDefault)


def test_entry_points_register_classes_and_functions(tmp_path, monkeypatch):
    (tmp_path / "ep_demo.py").write_text(
        textwrap.dedent(
            """
            import onnx_ir as ir

            class Mark(ir.passes.InPlacePass):
                name = "mark"
                def call(self, model):
                    return ir.passes.PassResult(model, False)

            def register(registry):
                class Other(Mark):
                    name = "mark-two"
                registry.register(Other, origin="ep_demo")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [
        metadata.EntryPoint("mark", "ep_demo:Mark", "compiler.passes"),
        metadata.EntryPoint("two", "ep_demo:register", "compiler.passes"),
    ]
    registry = PassRegistry()
    registry.load_entry_points(eps)
    assert {"mark", "mark-two"} <= {info.name for info in registry}
    sys.modules.pop("ep_demo", None)


def test_a_broken_plugin_is_reported_by_name():
    registry = PassRegistry()
    eps = [metadata.EntryPoint("broken", "no_such_module_xyz:Pass", "compiler.passes")]
    with pytest.raises(PipelineError, match="pass plugin 'broken'.*failed to import"):
        registry.load_entry_points(eps)


def test_default_registry_has_the_builtins():
    names = {info.name for info in default_registry()}
    assert {
        "cleanup",
        "dce",
        "fold-constants",
        "cse",
        "eliminate-identity",
        "infer-shapes",
    } <= names
