"""Precision casting: weights stored in bf16/fp16 (``cast``)."""

from __future__ import annotations

from passes.precision.cast import CastPass, cast_records

__all__ = ["CastPass", "cast_records"]
