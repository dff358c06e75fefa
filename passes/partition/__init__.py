"""Partitioning (``partition``): pipeline stages, each compiled into its own library
(``mode=pipeline``), or Megatron-style tensor parallelism, each shard's segments compiled into
their own libraries (``mode=tensor``)."""

from __future__ import annotations

from passes.partition.pipeline import (
    PLAN_KEY,
    STAGE_KEY,
    PartitionPass,
    node_costs,
    partition_plan,
)
from passes.partition.split import StageModel, split_shards, split_stages
from passes.partition.tensor import GROUP_KEY, SEGMENT_KEY, SHARD_KEY, shard_model

__all__ = [
    "GROUP_KEY",
    "PLAN_KEY",
    "SEGMENT_KEY",
    "SHARD_KEY",
    "STAGE_KEY",
    "PartitionPass",
    "StageModel",
    "node_costs",
    "partition_plan",
    "shard_model",
    "split_shards",
    "split_stages",
]
