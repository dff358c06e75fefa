"""Compiles a partitioned model (``partition`` pass) into one library per stage.

Layout inside the artifact folder (the top-level ``manifest.json`` hashes every file, nested
manifests included)::

    stages/0/model.so              stage 0's compiled library
    stages/0/weights.safetensors   the weights stage 0 uses (each weight lives in one stage)
    stages/0/manifest.json         stage 0's own signature: an artifact of its own
    stages/1/...

The top-level manifest's ``stages`` lists each stage's folder and interface (value names), and
``stage_edges`` which values flow from which stage to which (the plan's edges, with bytes).
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

__all__ = ["STAGES_DIR", "CompiledStages", "compile_stages"]

STAGES_DIR = "stages"


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
            folder = directory / rel
            folder.mkdir(parents=True)
            compiled.export_library(folder / LIBRARY_FILE)
            order = write_weights(folder, compiled.param_names, compiled.params)
            inputs, outputs = signature(stage.model)
            write_json(folder / "report.json", {"stage": stage.index})  # runtime expects one
            write_manifest(
                folder,
                {
                    "name": f"stage {stage.index}",
                    "inputs": [s.to_json() for s in inputs],
                    "outputs": [s.to_json() for s in outputs],
                    "target": compiled.target,
                    "library": LIBRARY_FILE,
                    "weights": {"file": WEIGHTS_FILE, "order": order},
                },
            )
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


def compile_stages(
    model: ir.Model,
    target: str | dict[str, Any],
    *,
    model_name: str,
    tuning_db: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompiledStages:
    """Splits ``model`` by its partition plan and compiles each stage for ``target``."""
    from backends.tvm.compile import compile_model
    from passes.partition import partition_plan, split_stages

    plan = partition_plan(model)
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


def is_partitioned(model: ir.Model) -> bool:
    """Whether ``model`` carries a pipeline partition plan (``build`` then compiles stages)."""
    from passes.partition import partition_plan

    plan = partition_plan(model)
    return plan is not None and plan.get("mode") == "pipeline" and len(plan["stages"]) > 1
