"""Two passes for compiler, installed as a plugin (docs/writing-passes.md)."""

from tutorial_passes.div_to_mul import DivByConstantToMul, DivToMulPass
from tutorial_passes.strip_metadata import StripMetadataPass

__all__ = ["DivByConstantToMul", "DivToMulPass", "StripMetadataPass"]
