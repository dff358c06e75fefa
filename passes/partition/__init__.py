"""Partitioning: pipeline stages (``partition``), each compiled into its own library."""

from __future__ import annotations

from passes.partition.pipeline import (
    PLAN_KEY,
    STAGE_KEY,
    PartitionPass,
    node_costs,
    partition_plan,
)
from passes.partition.split import StageModel, split_stages

__all__ = [
    "PLAN_KEY",
    "STAGE_KEY",
    "PartitionPass",
    "StageModel",
    "node_costs",
    "partition_plan",
    "split_stages",
]
