"""Recipes: TOML files that name a build's passes with their options, target and budgets.

A recipe is what ``--passes``, ``--target``, ``--max-error``, ``--metric``, ``--tolerance``,
``--calibration``, ``--tokenizer``, ``--tuning-db`` and ``--dim`` say on a command line, kept in a
file::

    # int4 weights for an LLM on this CPU        <- the first comment line describes the recipe
    target = "llvm"                               # or "cuda", or a table [target] kind = "cuda"
    max_error = 0.5                               # optional: accuracy budget of each lossy pass
    metric = "max"                                # optional: or "perplexity" (causal LMs)
    tolerance = 1e-3                              # optional: artifact vs onnxruntime
    tuning_db = "db/"                             # optional
    [calibration]                                 # optional
    file = "calib.txt"                            # relative paths: against the recipe's folder
    tokenizer = "smollm2"                         # a folder, or smollm2 / minilm
    [dims]                                        # optional: symbolic dimensions
    seq = 32
    [[passes]]                                    # one table per pass, in order
    name = "cleanup"
    [[passes]]
    name = "quantize"
    bits = 4
    group = 128

Pass names and options are checked against the pass registry (plugins included) with TOML's own
types: ``bits = "four"`` for an ``int`` option is an error, as is an option the pass lacks. A
pass entry may also name a named pipeline (``O1``, ``O2``), which takes no options. Every error
is a :class:`~compiler.errors.RecipeError` naming the file, the line and the problem; tomllib
reports no positions for values, so lines are found by scanning the text for the table headers
and keys (a hand-written recipe keeps one key per line; others fall back to the table's line).

The passes compile to the pipeline text ``--passes`` takes (:attr:`Recipe.pipeline`), so a recipe
builds exactly what the equivalent command line builds. Shipped recipes live in
``compiler/recipes/*.toml`` and are named without path or suffix (``int4-llm-cpu``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from compiler.accuracy import METRICS
from compiler.errors import PipelineError, RecipeError
from compiler.pass_registry import PassOption, PassRegistry, default_registry
from compiler.pipeline import NAMED_PIPELINES, PassSpec, format_pipeline

__all__ = ["Recipe", "description_of", "load_recipe", "parse_recipe", "shipped_recipes"]

# Tokenizers the command line knows by name (``--tokenizer``); anything else is a folder.
NAMED_TOKENIZERS = ("smollm2", "minilm")

_TOP_LEVEL = (
    "target", "max_error", "metric", "tolerance", "tuning_db", "calibration", "dims", "passes",
)  # fmt: skip
_CALIBRATION = ("file", "tokenizer")
_TOML_TYPE = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated recipe. Paths are absolute (resolved against the recipe's folder)."""

    name: str
    path: Path | None
    description: str
    passes: tuple[PassSpec, ...]
    target: str | dict[str, Any] | None = None
    max_error: float | None = None
    metric: str | None = None  # what max_error measures: "max" or "perplexity"
    tolerance: float | None = None
    tuning_db: Path | None = None
    calibration: Path | None = None
    tokenizer: str | None = None  # a name from NAMED_TOKENIZERS or a folder, resolved by the CLI
    dims: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def pipeline(self) -> str:
        """The passes as the pipeline text ``--passes`` takes."""
        return format_pipeline(list(self.passes))

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`compiler.build` (only what the recipe sets).

        The tokenizer is a name or folder, not a tokenizer object, so it is left out: load it
        (``python -m compiler build --recipe`` does) and pass ``tokenizer=`` yourself.
        """
        kwargs: dict[str, Any] = {"passes": self.pipeline}
        for key in ("target", "max_error", "metric", "tolerance", "tuning_db", "calibration"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        if self.dims:
            kwargs["dims"] = dict(self.dims)
        return kwargs


# ------------------------------------------------------------------------------- finding recipes
def _shipped_folder() -> Path:
    return Path(str(resources.files("compiler"))) / "recipes"


def shipped_recipes() -> dict[str, Path]:
    """The recipes that come with the compiler: name -> file."""
    folder = _shipped_folder()
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}


def load_recipe(name_or_path: str | Path, registry: PassRegistry | None = None) -> Recipe:
    """Reads a recipe file, or a shipped recipe by name (``int4-llm-cpu``)."""
    path = Path(name_or_path)
    if path.is_file():
        return parse_recipe(_read(path), path=path, registry=registry)
    shipped = shipped_recipes()
    if str(name_or_path) in shipped:
        file = shipped[str(name_or_path)]
        return parse_recipe(_read(file), path=file, registry=registry)
    if path.suffix == ".toml" or len(path.parts) > 1:
        raise RecipeError(f"recipe {str(name_or_path)!r}: no such file")
    close = difflib.get_close_matches(str(name_or_path), shipped, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise RecipeError(
        f"recipe {str(name_or_path)!r} is neither a file nor a shipped recipe{hint} "
        f"(shipped: {', '.join(shipped) or 'none'}; see: python -m compiler recipes)"
    )


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read the recipe: {e}") from e


def description_of(text: str) -> str:
    """The recipe's first comment line, without the ``#``."""
    for line in text.splitlines():
        if line.strip().startswith("#"):
            return line.strip().lstrip("#").strip()
    return ""


# ---------------------------------------------------------------------------- locating lines
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)\s*=""")


class _Lines:
    """Line numbers of table headers and keys in TOML text, found by scanning it.

    A section is ``()`` for the top level, ``("calibration",)`` for a table and
    ``("passes", i)`` for the i-th entry of an array of tables.
    """

    def __init__(self, text: str) -> None:
        self.headers: dict[tuple, int] = {}
        self.keys: dict[tuple[tuple, str], int] = {}
        counts: dict[str, int] = {}
        section: tuple = ()
        multiline: str | None = None  # the delimiter of an open multi-line string
        for number, line in enumerate(text.splitlines(), start=1):
            if multiline is not None:
                if line.count(multiline) % 2:
                    multiline = None
                continue
            header = _HEADER.match(line)
            if header:
                table = header.group(2)
                if header.group(1) == "[[":
                    section = (table, counts.get(table, 0))
                    counts[table] = section[1] + 1
                else:
                    section = (table,)
                self.headers.setdefault(section, number)
                continue
            key = _KEY.match(line)
            if key:
                self.keys.setdefault((section, key.group(1).strip("'\"")), number)
            for delimiter in ('"""', "'''"):
                if line.count(delimiter) % 2:
                    multiline = delimiter
                    break

    def line(self, section: tuple, key: str | None = None) -> int | None:
        """The line of ``key`` in ``section``, else of the section, else of its top-level key."""
        if key is not None and (section, key) in self.keys:
            return self.keys[(section, key)]
        if section in self.headers:
            return self.headers[section]
        if section and ((), section[0]) in self.keys:  # an inline table or array
            return self.keys[((), section[0])]
        return None


# ----------------------------------------------------------------------------------- parsing
class _Parser:
    def __init__(self, text: str, path: Path | None, registry: PassRegistry) -> None:
        self.text, self.path, self.registry = text, path, registry
        self.where = str(path) if path is not None else "<recipe>"
        self.lines = _Lines(text)

    def error(self, message: str, section: tuple = (), key: str | None = None) -> RecipeError:
        line = self.lines.line(section, key)
        at = f"{self.where}:{line}" if line is not None else self.where
        return RecipeError(f"{at}: {message}")

    def resolve(self, value: str) -> Path:
        base = self.path.parent if self.path is not None else Path.cwd()
        return (base / Path(value).expanduser()).resolve()

    def typed(self, value: Any, kind: type, what: str, section: tuple, key: str) -> Any:
        """``value`` if TOML gave it the type ``kind`` (an integer also counts as a float)."""
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        raise self.error(f"{what} expects {_TOML_TYPE[kind]}, got {_describe(value)}", section, key)

    def parse(self) -> Recipe:
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as e:
            raise self._syntax_error(e) from e
        unknown = [k for k in data if k not in _TOP_LEVEL]
        if unknown:
            raise self.error(_unknown("key", unknown[0], _TOP_LEVEL, "a recipe"), (), unknown[0])
        fields: dict[str, Any] = {}
        if "target" in data:
            fields["target"] = self._target(data["target"])
        for key in ("max_error", "tolerance"):
            if key in data:
                value = self.typed(data[key], float, key, (), key)
                if not value > 0:
                    raise self.error(f"{key} must be positive, got {data[key]!r}", (), key)
                fields[key] = value
        if "metric" in data:
            metric = self.typed(data["metric"], str, "metric", (), "metric")
            if metric not in METRICS:
                raise self.error(
                    f"metric must be one of {', '.join(METRICS)}, got {metric!r}", (), "metric"
                )
            fields["metric"] = metric
        if "tuning_db" in data:
            fields["tuning_db"] = self.resolve(
                self.typed(data["tuning_db"], str, "tuning_db", (), "tuning_db")
            )
        if "calibration" in data:
            fields.update(self._calibration(data["calibration"]))
        if "dims" in data:
            fields["dims"] = self._dims(data["dims"])
        if "passes" not in data:
            raise self.error('the recipe names no passes (add [[passes]] tables with name = "...")')
        return Recipe(
            name=self.path.stem if self.path is not None else "recipe",
            path=self.path,
            description=description_of(self.text),
            passes=tuple(self._passes(data["passes"])),
            **fields,
        )

    def _syntax_error(self, e: tomllib.TOMLDecodeError) -> RecipeError:
        message = str(e)
        match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if match is None:
            return RecipeError(f"{self.where}: TOML syntax error: {message}")
        number = int(match.group(1))
        lines = self.text.splitlines()
        source = lines[number - 1].strip() if 0 < number <= len(lines) else ""
        shown = f": {source}" if source else ""
        return RecipeError(
            f"{self.where}:{number}: TOML syntax error: {message[: match.start()]} "
            f"(column {match.group(2)}){shown}"
        )

    def _target(self, value: Any) -> str | dict[str, Any]:
        if isinstance(value, dict):
            if not isinstance(value.get("kind"), str):
                raise self.error('a [target] table needs kind = "llvm" or "cuda"', ("target",))
            return dict(value)
        return self.typed(value, str, "target", (), "target")

    def _calibration(self, table: Any) -> dict[str, Any]:
        section = ("calibration",)
        if not isinstance(table, dict):
            raise self.error(
                f"calibration must be a table ([calibration]), got {_describe(table)}",
                (),
                "calibration",
            )
        unknown = [k for k in table if k not in _CALIBRATION]
        if unknown:
            message = _unknown("key", unknown[0], _CALIBRATION, "[calibration]")
            raise self.error(message, section, unknown[0])
        if "file" not in table:
            raise self.error('[calibration] needs file = "..." (an .npz or a text file)', section)
        fields: dict[str, Any] = {
            "calibration": self.resolve(
                self.typed(table["file"], str, "calibration file", section, "file")
            )
        }
        if "tokenizer" in table:
            name = self.typed(table["tokenizer"], str, "tokenizer", section, "tokenizer")
            fields["tokenizer"] = name if name in NAMED_TOKENIZERS else str(self.resolve(name))
        return fields

    def _dims(self, table: Any) -> dict[str, int]:
        if not isinstance(table, dict):
            raise self.error(f"dims must be a table ([dims]), got {_describe(table)}", (), "dims")
        dims = {}
        for name, value in table.items():
            dims[name] = self.typed(value, int, f"dimension {name!r}", ("dims",), name)
            if dims[name] <= 0:
                raise self.error(f"dimension {name!r} must be positive", ("dims",), name)
        return dims

    def _passes(self, entries: Any) -> list[PassSpec]:
        if not isinstance(entries, list) or not entries:
            raise self.error(
                'passes must be an array of tables ([[passes]] with name = "...")', (), "passes"
            )
        specs: list[PassSpec] = []
        for index, entry in enumerate(entries):
            section = ("passes", index)
            ordinal = f"pass #{index + 1}"
            if not isinstance(entry, dict):
                raise self.error(f"{ordinal} must be a table, got {_describe(entry)}", section)
            if "name" not in entry:
                raise self.error(f'{ordinal} has no name (name = "...")', section)
            name = self.typed(entry["name"], str, f"the name of {ordinal}", section, "name")
            options = {k: v for k, v in entry.items() if k != "name"}
            if name in NAMED_PIPELINES:
                if options:
                    first = next(iter(options))
                    raise self.error(
                        f"the named pipeline {name!r} takes no options", section, first
                    )
                specs.extend(NAMED_PIPELINES[name]())
                continue
            if name not in self.registry:
                known = [info.name for info in self.registry] + list(NAMED_PIPELINES)
                close = difflib.get_close_matches(name, known, n=3)
                hint = f"; close names: {', '.join(close)}" if close else ""
                raise self.error(
                    f"unknown pass {name!r}{hint} (see: python -m compiler passes)",
                    section,
                    "name",
                )
            info = self.registry.get(name)
            converted: dict[str, Any] = {}
            for key, value in options.items():
                option = info.options.get(key)
                if option is None:
                    message = _unknown("option", key, list(info.options), f"pass {name!r}")
                    raise self.error(message, section, key)
                converted[key] = self._option(option, value, name, section)
            specs.append(PassSpec(name, converted))
        return specs

    def _option(self, option: PassOption, value: Any, pass_name: str, section: tuple) -> Any:
        what = f"option {option.name!r} of pass {pass_name!r}"
        if option.choices is not None:
            what += f" ({option.type_name})"
        typed = self.typed(value, option.type, what, section, option.name)
        try:
            return option.convert(typed, pass_name=pass_name)  # checks the choices
        except PipelineError as e:
            raise self.error(str(e), section, option.name) from e


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{value!r}"  # dates and times


def _unknown(kind: str, name: str, known: Any, owner: str) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(known) or "none"
    return f"unknown {kind} {name!r} in {owner}{hint} (known: {listing})"


def parse_recipe(
    text: str, *, path: str | Path | None = None, registry: PassRegistry | None = None
) -> Recipe:
    """Validates recipe ``text`` (read from ``path``, which relative paths resolve against)."""
    path = Path(path) if path is not None else None
    return _Parser(text, path, registry or default_registry()).parse()
