"""Quantize/dequantize insertion: weight-only int4/int8 (``quantize``)."""

from __future__ import annotations

from passes.quantize.weight_only import QuantizePass, quantize_records

__all__ = ["QuantizePass", "quantize_records"]
