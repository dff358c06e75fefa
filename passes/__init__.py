"""The built-in passes. Each family lives in its own module; names are used in text pipelines."""

from __future__ import annotations

from passes import cleanup, fusion, lowrank, partition, precision, prune, quantize

# Every pass class a family module exports is built in (the registry reads names and options).
BUILTIN_PASSES = [
    *(getattr(cleanup, name) for name in cleanup.__all__),
    fusion.FusePass,
    quantize.QuantizePass,
    prune.PrunePass,
    lowrank.LowRankPass,
    precision.CastPass,
    partition.PartitionPass,
]

__all__ = ["BUILTIN_PASSES"]
