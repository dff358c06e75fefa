"""Error types that the compiler reports to users as one clear sentence.

Every error raised on purpose derives from :class:`CompilerError`; the CLI prints its message on
one line and exits non-zero (``--verbose`` adds the traceback). Anything else escaping is a bug.

This module imports nothing heavy: the deployment runtime (:mod:`compiler.runtime`) uses it.
"""

from __future__ import annotations


class CompilerError(Exception):
    """Base class of every error the compiler reports on purpose."""

    exit_code = 1


class ModelLoadError(CompilerError):
    """The model file is missing, unreadable, malformed, or not an ONNX model."""


class UnsafeModelError(ModelLoadError):
    """The model refers to files outside its folder, or through symbolic links."""


class PipelineError(CompilerError):
    """A pass pipeline is malformed: unknown pass, bad option name, type or value."""

    exit_code = 2


class RecipeError(PipelineError):
    """A recipe file is malformed; the message names the file, the line and the problem."""


class PassFailedError(CompilerError):
    """A pass raised while running; the message names it and the passes that ran before it."""

    def __init__(self, message: str, *, pass_name: str, passes_before: list[str]):
        super().__init__(message)
        self.pass_name = pass_name
        self.passes_before = passes_before


class NumericDriftError(PassFailedError):
    """A pass changed the model's outputs by more than its declared tolerance."""


class BackendError(CompilerError):
    """A backend cannot compile the model (unsupported op, compile failure)."""


class ArtifactError(CompilerError):
    """An artifact folder is incomplete, tampered with, or was built by an incompatible version."""


class InputError(CompilerError):
    """Inputs given to a compiled model do not match its signature."""
