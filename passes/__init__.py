"""The built-in passes. Each family lives in its own module; names are used in text pipelines."""

from __future__ import annotations

from passes.cleanup import (
    CleanupPass,
    CommonSubexpressionEliminationPass,
    ConstantFoldingPass,
    DeadCodeEliminationPass,
    DeduplicateInitializersPass,
    IdentityEliminationPass,
    OnnxSimplifierPass,
    ShapeInferencePass,
)

BUILTIN_PASSES = [
    CleanupPass,
    CommonSubexpressionEliminationPass,
    ConstantFoldingPass,
    DeadCodeEliminationPass,
    DeduplicateInitializersPass,
    IdentityEliminationPass,
    OnnxSimplifierPass,
    ShapeInferencePass,
]

__all__ = ["BUILTIN_PASSES", *[cls.__name__ for cls in BUILTIN_PASSES]]
