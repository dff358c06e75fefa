"""Text pipelines: ``"cleanup,quantize(bits=4,group=128),cast(dtype=bf16)"`` -> pass instances.

Grammar (whitespace is ignored between tokens)::

    pipeline := item ("," item)*
    item     := NAME [ "(" [ option ("," option)* ] ")" ]
    option   := KEY "=" VALUE          VALUE: a bare word/number, or a '...' / "..." string

A NAME is a registered pass or a named pipeline (``O0``, ``O1``, ``O2``), which expands in
place; named pipelines take no options. Errors name the offending item and its column.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import onnx_ir as ir

from compiler.errors import PipelineError
from compiler.pass_registry import PassRegistry, default_registry

__all__ = ["NAMED_PIPELINES", "PassSpec", "build_passes", "format_pipeline", "parse_pipeline"]


def _o0() -> list[PassSpec]:
    return []


def _o1() -> list[PassSpec]:
    return [PassSpec("cleanup")]


def _o2() -> list[PassSpec]:
    return [PassSpec("cleanup"), PassSpec("fuse")]


# Named pipelines: a name -> function returning the pass specs.
NAMED_PIPELINES: dict[str, Callable[[], list[PassSpec]]] = {"O0": _o0, "O1": _o1, "O2": _o2}


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """One pipeline item: a pass name and its options as written (strings or Python values)."""

    name: str
    options: dict[str, object] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        """The item as pipeline text that :func:`parse_pipeline` reads back to the same spec."""
        if not self.options:
            return self.name
        items = ",".join(f"{k}={_format_value(v)}" for k, v in self.options.items())
        return f"{self.name}({items})"


_WORD = re.compile(r"[A-Za-z0-9_.+\-]+")


def _format_value(value: object) -> str:
    """A bare word where the tokenizer reads one back, else a quoted string (regexes, spaces)."""
    text = str(value)
    if _WORD.fullmatch(text):
        return text
    for quote in ("'", '"'):
        if quote not in text:
            return f"{quote}{text}{quote}"
    raise PipelineError(
        f"the option value {text!r} holds both quote characters; it has no text form"
    )


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'[^']*'|"[^"]*")
      | (?P<word>"""
    + _WORD.pattern
    + r""")
      | (?P<punct>[(),=])
    )""",
    re.VERBOSE,
)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip())
            raise PipelineError(
                f"pipeline {text!r}: unexpected character {text[col]!r} at column {col + 1}"
            )
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "string":
            value = value[1:-1]
        tokens.append((kind, value, match.start(kind)))
        pos = match.end()
    return tokens


def parse_pipeline(text: str) -> list[PassSpec]:
    """Parses a text pipeline into pass specs, expanding named pipelines. Empty text: no passes."""
    tokens = _tokenize(text)
    specs: list[PassSpec] = []
    i = 0

    def fail(message: str, at: int) -> PipelineError:
        column = tokens[at][2] + 1 if at < len(tokens) else len(text) + 1
        return PipelineError(f"pipeline {text!r}: {message} at column {column}")

    def expect(kind: str, value: str | None = None) -> str:
        nonlocal i
        if (
            i >= len(tokens)
            or tokens[i][0] != kind
            or (value is not None and tokens[i][1] != value)
        ):
            wanted = repr(value) if value else kind
            raise fail(f"expected {wanted}", i)
        i += 1
        return tokens[i - 1][1]

    while i < len(tokens):
        if tokens[i][0] != "word":
            raise fail("expected a pass name", i)
        name = expect("word")
        options: dict[str, object] = {}
        if i < len(tokens) and tokens[i][1] == "(":
            i += 1
            while i < len(tokens) and tokens[i][1] != ")":
                key = expect("word")
                expect("punct", "=")
                if i >= len(tokens) or tokens[i][0] not in ("word", "string"):
                    raise fail(f"option {key!r} of {name!r} needs a value", i)
                if key in options:
                    raise fail(f"option {key!r} of {name!r} is given twice", i)
                options[key] = tokens[i][1]
                i += 1
                if i < len(tokens) and tokens[i][1] == ",":
                    i += 1
            expect("punct", ")")
        if name in NAMED_PIPELINES:
            if options:
                raise PipelineError(
                    f"pipeline {text!r}: the named pipeline {name!r} takes no options"
                )
            specs.extend(NAMED_PIPELINES[name]())
        else:
            specs.append(PassSpec(name, options))
        if i < len(tokens):
            expect("punct", ",")
            if i >= len(tokens):
                raise fail("expected a pass name after ','", i)
    return specs


def format_pipeline(specs: list[PassSpec]) -> str:
    """The pipeline text of ``specs``; :func:`parse_pipeline` reads it back to the same specs."""
    return ",".join(str(spec) for spec in specs)


def build_passes(
    pipeline: str | list[PassSpec], registry: PassRegistry | None = None
) -> list[ir.passes.PassBase]:
    """Instantiates every pass of ``pipeline`` (text or specs), validating names and options."""
    registry = registry or default_registry()
    specs = parse_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
    return [registry.create(spec.name, **spec.options) for spec in specs]
