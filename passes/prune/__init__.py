"""Dead-weight elimination: structured pruning of FFN neurons (``prune``) or attention heads
(``prune(mode=heads)``, GQA-aware) that physically shrinks tensors, and unstructured magnitude
pruning reported as sparsity (``prune(mode=unstructured)``)."""

from __future__ import annotations

from passes.prune.structured import PrunePass, prune_records

__all__ = ["PrunePass", "prune_records"]
