"""Named passes with typed options, including third-party passes from entry points.

A pass is an ``onnx_ir.passes.PassBase`` subclass with a kebab-case class attribute ``name`` and
keyword-only options declared in ``__init__`` with type annotations and defaults::

    class LowRankPass(ir.passes.InPlacePass):
        '''Replaces MatMul(x, W) by MatMul(MatMul(x, U), V).'''
        name = "lowrank"
        def __init__(self, *, budget: float = 0.01, min_size: int = 4096) -> None: ...

The registry reads the options from that signature (``int``, ``float``, ``bool``, ``str``, and
``Literal[...]`` of those), so text pipelines (:mod:`compiler.pipeline`) and ``python -m compiler
passes`` need nothing else. Third-party packages add passes through the entry-point group
``compiler.passes``: each entry point names a pass class, or a function taking the registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import re
import typing
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import onnx_ir as ir

from compiler.errors import PipelineError

__all__ = [
    "ENTRY_POINT_GROUP",
    "PassInfo",
    "PassOption",
    "PassRegistry",
    "default_registry",
    "register_pass",
]

ENTRY_POINT_GROUP = "compiler.passes"
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_SCALARS = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class PassOption:
    """One keyword option of a pass: its name, accepted type (or choices) and default."""

    name: str
    type: type
    default: Any
    choices: tuple[Any, ...] | None = None

    @property
    def type_name(self) -> str:
        if self.choices is not None:
            return " | ".join(repr(c) for c in self.choices)
        return self.type.__name__

    def convert(self, value: Any, *, pass_name: str) -> Any:
        """Returns ``value`` (a string from a text pipeline, or a Python value) as this type."""
        where = f"option {self.name!r} of pass {pass_name!r}"
        converted = _convert_scalar(value, self.type, where)
        if self.choices is not None and converted not in self.choices:
            raise PipelineError(f"{where} must be one of {self.type_name}, got {value!r}")
        return converted


def _convert_scalar(value: Any, target: type, where: str) -> Any:
    if isinstance(value, target) and not (target is int and isinstance(value, bool)):
        return value
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if target is bool:
                lowered = text.lower()
                if lowered in ("true", "1", "yes", "on"):
                    return True
                if lowered in ("false", "0", "no", "off"):
                    return False
                raise ValueError(text)
            if target is int:
                return int(text, 0)
            if target is float:
                return float(text)
            if target is str:
                return text
        except ValueError:
            pass
    raise PipelineError(f"{where} expects {target.__name__}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class PassInfo:
    """A registered pass: its name, class, one-line summary, options and where it came from."""

    name: str
    cls: type[ir.passes.PassBase]
    options: dict[str, PassOption]
    origin: str = "builtin"

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.cls) or ""

    def create(self, **options: Any) -> ir.passes.PassBase:
        """Instantiates the pass with validated, converted options."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise PipelineError(
                f"pass {self.name!r} has no option {unknown[0]!r} (its options: {known})"
            )
        kwargs = {k: self.options[k].convert(v, pass_name=self.name) for k, v in options.items()}
        return self.cls(**kwargs)


def options_of(cls: type) -> dict[str, PassOption]:
    """Reads the typed keyword options from ``cls.__init__``."""
    init = cls.__init__
    if init is object.__init__:
        return {}
    try:
        hints = typing.get_type_hints(init)
    except Exception as e:
        raise TypeError(f"cannot read the option types of {cls.__qualname__}: {e}") from e
    result: dict[str, PassOption] = {}
    for param in inspect.signature(init).parameters.values():
        if param.name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is inspect.Parameter.empty:
            raise TypeError(f"{cls.__qualname__}: option {param.name!r} needs a default value")
        hint = hints.get(param.name, type(param.default))
        choices = None
        if typing.get_origin(hint) is typing.Literal:
            choices = typing.get_args(hint)
            hint = type(choices[0])
        if hint not in _SCALARS:
            raise TypeError(
                f"{cls.__qualname__}: option {param.name!r} has type {hint!r}; "
                "options must be bool, int, float, str or a Literal of those"
            )
        result[param.name] = PassOption(param.name, hint, param.default, choices)
    return result


class PassRegistry:
    """Maps kebab-case pass names to :class:`PassInfo`."""

    def __init__(self) -> None:
        self._passes: dict[str, PassInfo] = {}

    def register(
        self, cls: type[ir.passes.PassBase], *, name: str | None = None, origin: str = "builtin"
    ) -> type[ir.passes.PassBase]:
        """Adds ``cls`` under ``name`` (default ``cls.name``); returns ``cls``."""
        if not (isinstance(cls, type) and issubclass(cls, ir.passes.PassBase)):
            raise TypeError(f"{cls!r} is not a subclass of onnx_ir.passes.PassBase")
        name = name or getattr(cls, "name", None)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise TypeError(
                f"{cls.__qualname__}: pass name {name!r} must be kebab-case (e.g. 'fold-constants')"
            )
        existing = self._passes.get(name)
        if existing is not None and existing.cls is not cls:
            raise ValueError(
                f"pass name {name!r} from {origin} is already taken by "
                f"{existing.cls.__module__}.{existing.cls.__qualname__} ({existing.origin})"
            )
        self._passes[name] = PassInfo(name, cls, options_of(cls), origin)
        return cls

    def get(self, name: str) -> PassInfo:
        info = self._passes.get(name)
        if info is None:
            close = difflib.get_close_matches(name, self._passes, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PipelineError(f"unknown pass {name!r}{hint} (see: python -m compiler passes)")
        return info

    def create(self, name: str, **options: Any) -> ir.passes.PassBase:
        return self.get(name).create(**options)

    def __contains__(self, name: object) -> bool:
        return name in self._passes

    def __iter__(self):
        return iter(sorted(self._passes.values(), key=lambda info: info.name))

    def __len__(self) -> int:
        return len(self._passes)

    def load_entry_points(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        """Registers the passes that installed packages declare in ``compiler.passes``.

        An entry point's object is a pass class, or a callable that takes this registry.
        A plugin that fails to import is reported with its name, not silently skipped.
        """
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in entry_points:
            dist = getattr(ep.dist, "name", None) or ep.value
            origin = f"plugin {dist}"
            try:
                obj = ep.load()
            except Exception as e:
                raise PipelineError(
                    f"the pass plugin {ep.name!r} ({ep.value}) from {dist} failed to import: {e}"
                ) from e
            if isinstance(obj, type):
                self.register(obj, origin=origin)
            elif callable(obj):
                obj(self)
            else:
                raise PipelineError(f"the pass plugin {ep.name!r} ({ep.value}) is not a pass class")


def register_pass(cls: type[ir.passes.PassBase]) -> type[ir.passes.PassBase]:
    """Class decorator: adds a pass to the default registry (for scripts and notebooks)."""
    return default_registry().register(cls, origin=cls.__module__)


@functools.cache
def default_registry() -> PassRegistry:
    """The built-in passes plus every installed ``compiler.passes`` plugin (built once)."""
    from passes import BUILTIN_PASSES

    registry = PassRegistry()
    for cls in BUILTIN_PASSES:
        registry.register(cls)
    registry.load_entry_points()
    return registry
