"""Matrix decomposition: low-rank factorization of MatMul/Gemm weights (``lowrank``)."""

from __future__ import annotations

from passes.lowrank.decompose import LowRankPass, lowrank_records

__all__ = ["LowRankPass", "lowrank_records"]
