from __future__ import annotations

import re

import pytest

from compiler.errors import PipelineError
from compiler.pipeline import PassSpec, build_passes, parse_pipeline
from passes.cleanup import CommonSubexpressionEliminationPass, ConstantFoldingPass


def test_parses_names_and_options():
    specs = parse_pipeline(" cse(size_limit=4) , fold-constants(shape_inference='false'), dce ")
    assert specs == [
        PassSpec("cse", {"size_limit": "4"}),
        PassSpec("fold-constants", {"shape_inference": "false"}),
        PassSpec("dce"),
    ]


def test_named_pipelines_expand():
    assert parse_pipeline("O0") == []
    assert parse_pipeline("O1") == [PassSpec("cleanup")]
    assert parse_pipeline("O1,cse") == [PassSpec("cleanup"), PassSpec("cse")]
    assert parse_pipeline("O2") == [PassSpec("cleanup"), PassSpec("fuse")]
    assert parse_pipeline("") == []


def test_build_passes_converts_option_types():
    cse, fold = build_passes("cse(size_limit=0x10),fold-constants(shape_inference=no)")
    assert isinstance(cse, CommonSubexpressionEliminationPass) and cse.size_limit == 16
    assert isinstance(fold, ConstantFoldingPass) and fold.shape_inference is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cleanup,", "expected a pass name after ','"),
        ("cse(size_limit=4", "expected ')'"),
        ("cse(size_limit)", "expected '='"),
        ("cse(size_limit=)", "needs a value"),
        ("cse(size_limit=1,size_limit=2)", "given twice"),
        ("O1(x=1)", "takes no options"),
        ("cse;dce", "unexpected character ';'"),
    ],
)
def test_syntax_errors_name_the_problem(text, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        build_passes(text)


def test_unknown_pass_suggests_a_close_name():
    with pytest.raises(PipelineError, match=r"unknown pass 'clean-up'; did you mean 'cleanup'"):
        build_passes("clean-up")


def test_bad_option_name_and_type():
    with pytest.raises(PipelineError, match=r"pass 'cse' has no option 'limit'.*size_limit"):
        build_passes("cse(limit=3)")
    with pytest.raises(PipelineError, match=r"option 'size_limit' of pass 'cse' expects int"):
        build_passes("cse(size_limit=big)")
