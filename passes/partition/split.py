"""Cuts a partitioned model (``partition`` pass) into standalone ONNX models.

``mode=pipeline``: one model per stage. Stage ``s`` keeps its nodes, the initializers they use,
and a private copy of every ``Constant`` node it reads (so shape tensors stay constants: TVM
cannot compile a ``Reshape`` whose shape is a runtime input). Its inputs are, in the plan's
order, the graph inputs it reads and the values earlier stages produce for it; its outputs are
the values later stages read plus the graph outputs it produces. Running the stages in order,
each on the values gathered so far, computes exactly what the whole model computes: the nodes
and their order are unchanged.

``mode=tensor``: one model per segment and shard (:mod:`passes.partition.tensor`): shard ``k``
of segment ``j`` keeps the segment's replicated nodes and its own shard's nodes, with the
interface the plan lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx_ir as ir

from compiler.errors import InputError
from passes.partition.pipeline import STAGE_KEY, partition_plan
from passes.partition.tensor import COMBINE_KEY, GROUP_KEY, SEGMENT_KEY, SHARD_KEY

__all__ = ["StageModel", "split_shards", "split_stages"]


@dataclasses.dataclass
class StageModel:
    """One stage: its index, its standalone model, and its interface (value names)."""

    index: int
    model: ir.Model
    inputs: list[str]
    outputs: list[str]


def _stage_of(node: ir.Node) -> int | None:
    text = node.metadata_props.get(STAGE_KEY)
    return int(text) if text is not None else None


def _stage(model: ir.Model, index: int, inputs: list[str], outputs: list[str]) -> StageModel:
    return _extract(
        model, index, f"stage {index}", STAGE_KEY, lambda n: _stage_of(n) == index, inputs, outputs
    )


def _extract(
    model: ir.Model,
    index: int,
    label: str,
    key: str,
    mine_if: Callable[[ir.Node], bool],
    inputs: list[str],
    outputs: list[str],
) -> StageModel:
    """The nodes ``mine_if`` selects as a standalone model with the given interface."""
    clone = model.clone()  # tensors are shared, not copied
    graph = clone.graph
    nodes = list(graph)
    missing = [n.name for n in nodes if key not in n.metadata_props and n.op_type != "Constant"]
    if missing:
        raise InputError(
            f"partition: node {missing[0]!r} has no {key.rsplit('.', 1)[-1]} (a pass after "
            "`partition` added it; run `partition` last)"
        )
    mine = {id(n) for n in nodes if n.op_type != "Constant" and mine_if(n)}
    for node in nodes:  # constants this stage reads: its own copy
        if node.op_type == "Constant" and any(
            id(user) in mine for value in node.outputs for user, _ in value.uses()
        ):
            mine.add(id(node))
    by_name = {v.name: v for v in graph.inputs}
    produced = {v.name: v for n in nodes if id(n) in mine for v in n.outputs}
    new_inputs: dict[str, ir.Value] = {}
    for name in inputs:
        if name in by_name:
            new_inputs[name] = by_name[name]
    for node in nodes:
        if id(node) not in mine:
            continue
        for slot, value in enumerate(node.inputs):
            if value is None or value.name in by_name or value.is_initializer():
                continue
            producer = value.producer()
            if producer is None or id(producer) in mine:
                continue
            if value.name not in inputs:
                raise InputError(
                    f"partition: {label} reads {value.name!r}, which the plan does not "
                    "list as its input (the model changed after `partition`; run it last)"
                )
            boundary = new_inputs.get(value.name)
            if boundary is None:
                boundary = ir.Value(name=value.name, shape=value.shape, type=value.type)
                new_inputs[value.name] = boundary
            node.replace_input_with(slot, boundary)
    others = [n for n in nodes if id(n) not in mine]
    graph.remove(others, safe=False)
    for name in outputs:
        if name not in produced:
            raise InputError(f"partition: {label} does not produce {name!r}")
    graph.inputs.clear()
    graph.inputs.extend(new_inputs[name] for name in inputs)
    graph.outputs.clear()
    graph.outputs.extend(produced[name] for name in outputs)
    # The removed nodes still list their inputs as uses: count the stage's own reads.
    read = {id(v) for n in graph for v in n.inputs if v is not None}
    for name in [k for k, v in graph.initializers.items() if id(v) not in read]:
        graph.initializers.pop(name)
    for node in graph:
        for name in (STAGE_KEY, SEGMENT_KEY, SHARD_KEY, GROUP_KEY, COMBINE_KEY):
            node.metadata_props.pop(name, None)
    clone.metadata_props.pop("compiler.partition", None)
    return StageModel(index, clone, list(inputs), list(outputs))


def split_stages(model: ir.Model) -> list[StageModel]:
    """One standalone model per stage of ``model``'s partition plan (in stage order)."""
    plan = partition_plan(model)
    if plan is None or plan.get("mode") != "pipeline":
        raise InputError("split_stages needs a model partitioned by `partition(mode=pipeline)`")
    return [_stage(model, s["stage"], s["inputs"], s["outputs"]) for s in plan["stages"]]


def split_shards(model: ir.Model) -> list[list[StageModel]]:
    """Per segment of ``model``'s tensor-parallel plan, one standalone model per shard."""
    plan = partition_plan(model)
    if plan is None or plan.get("mode") != "tensor":
        raise InputError("split_shards needs a model partitioned by `partition(mode=tensor)`")

    def member(segment: int, shard: int) -> Callable[[ir.Node], bool]:
        def mine(node: ir.Node) -> bool:
            k = node.metadata_props.get(SHARD_KEY)
            return int(node.metadata_props[SEGMENT_KEY]) == segment and k in (None, str(shard))

        return mine

    return [
        [
            _extract(
                model,
                entry["segment"],
                f"segment {entry['segment']} shard {k}",
                SEGMENT_KEY,
                member(entry["segment"], k),
                info["inputs"],
                info["outputs"],
            )
            for k, info in enumerate(entry["shards"])
        ]
        for entry in plan["segments"]
    ]
