"""Compiles a partitioned model (``partition`` pass): one library per pipeline stage, or one
per segment and shard of a tensor-parallel model.

Layout of a pipeline artifact (the top-level ``manifest.json`` hashes every file, nested
manifests included)::

    stages/0/model.so              stage 0's compiled library
    stages/0/weights.safetensors   the weights stage 0 uses (each weight lives in one stage)
    stages/0/manifest.json         stage 0's own signature: an artifact of its own
    stages/1/...

The top-level manifest's ``stages`` lists each stage's folder and interface (value names), and
``stage_edges`` which values flow from which stage to which (the plan's edges, with bytes).

A tensor-parallel artifact (``partition(mode=tensor)``) has ``shards/<segment>/<shard>/``
folders laid out like a stage's, and its manifest's ``tensor_parallel`` records the structure:
``shards`` (K), and ``segments`` in order, each with its ``group`` (None for the last) and, per
shard, the folder, its interface and ``exchange``: the values it sends every other shard after
the segment ran (its slices or partial sums, which the next segment combines with
``Concat``/``Sum``). ``groups`` summarizes what each group shards and exchanges.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx_ir as ir

from compiler.artifact import LIBRARY_FILE, WEIGHTS_FILE, write_json, write_manifest
from compiler.model_info import signature

__all__ = ["SHARDS_DIR", "STAGES_DIR", "CompiledShards", "CompiledStages", "compile_stages"]

STAGES_DIR = "stages"
SHARDS_DIR = "shards"


@dataclasses.dataclass
class CompiledStages:
    """Every stage compiled, plus the plan; ``write`` lays them out in an artifact folder."""

    stages: list[Any]  # (StageModel, CompiledModule) pairs
    plan: dict[str, Any]
    target: dict[str, Any]
    tuned_kernels: int

    def write(
        self, directory: Path, write_weights: Callable[[Path, list, list], list[dict]]
    ) -> dict[str, Any]:
        """Writes each stage's folder; returns the top-level manifest's fields for them."""
        entries = []
        for (stage, compiled), info in zip(self.stages, self.plan["stages"], strict=True):
            rel = f"{STAGES_DIR}/{stage.index}"
            _write_module(directory / rel, f"stage {stage.index}", stage, compiled, write_weights)
            entries.append(
                {
                    "index": stage.index,
                    "path": rel,
                    "inputs": stage.inputs,
                    "outputs": stage.outputs,
                    "nodes": info["nodes"],
                    "flops": info["flops"],
                    "estimated_seconds": info["cost_s"],
                }
            )
        return {
            "library": None,
            "weights": None,
            "stages": entries,
            "stage_edges": self.plan["edges"],
        }


def _write_module(
    folder: Path,
    name: str,
    stage: Any,
    compiled: Any,
    write_weights: Callable[[Path, list, list], list[dict]],
) -> None:
    """One compiled piece as an artifact of its own: library, weights, manifest."""
    folder.mkdir(parents=True)
    compiled.export_library(folder / LIBRARY_FILE)
    order = write_weights(folder, compiled.param_names, compiled.params)
    inputs, outputs = signature(stage.model)
    write_json(folder / "report.json", {"name": name})  # the runtime expects one
    write_manifest(
        folder,
        {
            "name": name,
            "inputs": [s.to_json() for s in inputs],
            "outputs": [s.to_json() for s in outputs],
            "target": compiled.target,
            "library": LIBRARY_FILE,
            "weights": {"file": WEIGHTS_FILE, "order": order},
        },
    )


@dataclasses.dataclass
class CompiledShards:
    """Every segment's shards compiled, plus the plan; ``write`` lays them out."""

    segments: list[list[Any]]  # per segment, per shard: (StageModel, CompiledModule)
    plan: dict[str, Any]
    target: dict[str, Any]
    tuned_kernels: int

    def write(
        self, directory: Path, write_weights: Callable[[Path, list, list], list[dict]]
    ) -> dict[str, Any]:
        """Writes each shard's folder; returns the top-level manifest's fields for them."""
        segments = []
        for pieces, info in zip(self.segments, self.plan["segments"], strict=True):
            shards = []
            for k, ((stage, compiled), interface) in enumerate(
                zip(pieces, info["shards"], strict=True)
            ):
                rel = f"{SHARDS_DIR}/{info['segment']}/{k}"
                name = f"segment {info['segment']} shard {k}"
                _write_module(directory / rel, name, stage, compiled, write_weights)
                shards.append(
                    {
                        "path": rel,
                        "inputs": stage.inputs,
                        "outputs": stage.outputs,
                        "exchange": interface["exchange"],
                    }
                )
            segments.append({"index": info["segment"], "group": info["group"], "shards": shards})
        return {
            "library": None,
            "weights": None,
            "tensor_parallel": {
                "shards": self.plan["shards"],
                "segments": segments,
                "groups": self.plan["groups"],
                "exchange_bytes": self.plan["exchange_bytes"],
            },
        }


def compile_stages(
    model: ir.Model,
    target: str | dict[str, Any],
    *,
    model_name: str,
    tuning_db: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompiledStages | CompiledShards:
    """Splits ``model`` by its partition plan and compiles each stage (or each segment's
    shards) for ``target``."""
    from backends.tvm.compile import compile_model
    from passes.partition import partition_plan, split_stages

    plan = partition_plan(model)
    if plan["mode"] == "tensor":
        return _compile_shards(model, plan, target, model_name, tuning_db, progress)
    compiled = []
    for stage in split_stages(model):
        if progress is not None:
            progress(f"compiling stage {stage.index + 1} of {len(plan['stages'])}")
        module = compile_model(
            stage.model,
            target,
            model_name=f"{model_name} (stage {stage.index})",
            tuning_db=tuning_db,
        )
        compiled.append((stage, module))
    return CompiledStages(
        stages=compiled,
        plan=plan,
        target=compiled[0][1].target,
        tuned_kernels=sum(m.tuned_kernels for _, m in compiled),
    )


def _compile_shards(model, plan, target, model_name, tuning_db, progress) -> CompiledShards:
    from backends.tvm.compile import compile_model
    from passes.partition.split import split_shards

    segments = []
    pieces = split_shards(model)
    total = sum(len(p) for p in pieces)
    done = 0
    for stages in pieces:
        compiled = []
        for k, stage in enumerate(stages):
            done += 1
            if progress is not None:
                progress(f"compiling shard {k} of segment {stage.index} ({done} of {total})")
            module = compile_model(
                stage.model,
                target,
                model_name=f"{model_name} (segment {stage.index}, shard {k})",
                tuning_db=tuning_db,
            )
            compiled.append((stage, module))
        segments.append(compiled)
    return CompiledShards(
        segments=segments,
        plan=plan,
        target=segments[0][0][1].target,
        tuned_kernels=sum(m.tuned_kernels for pieces in segments for _, m in pieces),
    )


def is_partitioned(model: ir.Model) -> bool:
    """Whether ``model`` carries a partition plan that ``build`` compiles piece by piece: a
    pipeline of several stages, or a tensor-parallel model."""
    from passes.partition import partition_plan

    plan = partition_plan(model)
    if plan is None:
        return False
    if plan.get("mode") == "tensor":
        return True
    return plan.get("mode") == "pipeline" and len(plan["stages"]) > 1
