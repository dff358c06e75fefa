"""``partition``: assigns every node to one of ``K`` pipeline stages, balanced by a cost model,
with as few activation bytes as possible crossing stage boundaries.

**Cost model.** A node costs ``max(flops / PEAK_FLOPS, bytes / BANDWIDTH) + NODE_OVERHEAD_S``
(a roofline: FLOPs from :func:`compiler.model_info.node_flops`, bytes = the node's inputs —
weights included — plus its outputs, from dtypes and static shapes). A measured profile (a JSON
object ``{node name: seconds}``, option ``profile=FILE``) replaces the estimate of every node it
names, so the plan can be refined by a run of the artifact.

**Algorithm.** The nodes are put in one topological order (networkx, ties broken by the order
in the file: the exporter's layer-by-layer order) and cut into ``K`` *contiguous* runs. With
``P[j]`` the cost of the first ``j`` nodes and ``cross[j]`` the bytes of the values produced
before position ``j`` and used at or after it (the activations a cut at ``j`` must ship):

1. the best bottleneck ``B* = min over cuts of max stage cost`` (binary search on ``B``, a
   greedy fill decides feasibility — exact for contiguous runs);
2. a dynamic program over positions, ``g[k][j] = min_i g[k-1][i] + cross[i]`` subject to
   ``P[j] - P[i] <= (1 + balance) B*``, picks the cuts with the fewest crossing bytes among
   the partitions whose slowest stage is within ``balance`` of the best (ties in bytes go to
   the more even split). ``O(K n²)`` (numpy).

*Why not min-cut.* An s-t min-cut (``networkx.minimum_cut``) minimizes crossing bytes but
knows nothing of balance — on a transformer it cuts right after the token ids — and balanced
k-way graph partitioning is NP-hard; heuristics (Kernighan–Lin, spectral) return node sets whose
stage graph may have cycles (stage 0 → 1 → 0), which a pipeline cannot run without extra
round trips. Contiguous runs of a topological order are always an acyclic chain, the DP is exact
over that family, and a transformer's graph is close to a chain, so little is lost.

Constant nodes cost nothing and their outputs never count as crossing: a stage that needs a
constant gets its own copy when the stages are split (:mod:`passes.partition.split`). Graph
inputs are handed to every stage that uses them by the runtime.

The pass only annotates: each node gets ``compiler.partition.stage`` in its metadata, and the
model gets the plan (``compiler.partition``: stages with their cost, FLOPs, node count, inputs
and outputs; edges with the values and bytes that flow between stages). Numerics do not change.

``partition(mode=tensor, shards=K)`` shards the weights instead: :mod:`passes.partition.tensor`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import networkx as nx
import numpy as np
import onnx_ir as ir

from compiler.errors import InputError
from compiler.model_info import node_flops

__all__ = ["PLAN_KEY", "STAGE_KEY", "PartitionPass", "node_costs", "partition_plan", "value_bytes"]

PLAN_KEY = "compiler.partition"
STAGE_KEY = "compiler.partition.stage"
# Roofline constants measured on this machine (TVM_NOTES.md): fp32 GEMM ≈ 160–230 GFLOP/s,
# DRAM ≈ 25 GB/s. Only ratios matter for balance; the absolute values only label the plan.
PEAK_FLOPS = 160e9
BANDWIDTH = 25e9
NODE_OVERHEAD_S = 2e-6  # one kernel call of the VM


def partition_plan(model: ir.Model) -> dict | None:
    """The plan the ``partition`` pass recorded in ``model``, or None."""
    text = model.metadata_props.get(PLAN_KEY)
    return json.loads(text) if text else None


def value_bytes(value: ir.Value | None) -> int:
    """Bytes of a value from its dtype and static shape (0 when unknown)."""
    if value is None or value.dtype is None or value.shape is None:
        return 0
    if not all(isinstance(d, int) for d in value.shape):
        return 0
    count = int(np.prod(list(value.shape))) if len(value.shape) else 1
    return int(count * value.dtype.itemsize)


def _is_constant_node(node: ir.Node) -> bool:
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx")


def node_costs(nodes: list[ir.Node], profile: dict[str, float] | None = None) -> np.ndarray:
    """Estimated seconds per node (roofline), or the profile's measurement where it has one."""
    costs = np.zeros(len(nodes))
    for i, node in enumerate(nodes):
        if _is_constant_node(node):
            continue
        if profile and node.name in profile:
            costs[i] = float(profile[node.name])
            continue
        flops = node_flops(node) or 0
        moved = sum(value_bytes(v) for v in node.inputs) + sum(value_bytes(v) for v in node.outputs)
        costs[i] = max(flops / PEAK_FLOPS, moved / BANDWIDTH) + NODE_OVERHEAD_S
    return costs


def topological_nodes(graph: ir.Graph) -> list[ir.Node]:
    """The graph's nodes in a topological order that keeps the file's order where it can."""
    nodes = list(graph)
    index = {id(n): i for i, n in enumerate(nodes)}
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(nodes)))
    for i, node in enumerate(nodes):
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and id(producer) in index:
                dag.add_edge(index[id(producer)], i)
    order = nx.lexicographical_topological_sort(dag, key=lambda i: i)
    return [nodes[i] for i in order]


def crossing_bytes(nodes: list[ir.Node]) -> np.ndarray:
    """``cross[j]``: bytes of values produced before position ``j`` and used at ``j`` or later."""
    position = {id(n): i for i, n in enumerate(nodes)}
    diff = np.zeros(len(nodes) + 1)
    for p, node in enumerate(nodes):
        if _is_constant_node(node):
            continue  # copied into each stage that needs it
        for value in node.outputs:
            last = max(
                (position[id(user)] for user, _ in value.uses() if id(user) in position),
                default=p,
            )
            if last > p:
                diff[p + 1] += value_bytes(value)
                diff[last + 1] -= value_bytes(value)
    return np.cumsum(diff)[: len(nodes)]


def _fits(costs: np.ndarray, stages: int, limit: float) -> bool:
    """Whether a greedy fill cuts ``costs`` into at most ``stages`` runs of at most ``limit``."""
    used, total = 1, 0.0
    for c in costs:
        if c > limit:
            return False
        if total + c > limit:
            used, total = used + 1, c
        else:
            total += c
    return used <= stages


def best_bottleneck(costs: np.ndarray, stages: int) -> float:
    """The smallest possible cost of the slowest stage over contiguous cuts (binary search)."""
    low, high = max(float(costs.max()), float(costs.sum()) / stages), float(costs.sum())
    for _ in range(60):
        if high - low <= 1e-9 * high:
            break
        middle = (low + high) / 2
        low, high = (low, middle) if _fits(costs, stages, middle) else (middle, high)
    return high


def choose_cuts(costs: np.ndarray, cross: np.ndarray, stages: int, balance: float) -> list[int]:
    """Cut positions (``stages - 1`` of them, increasing) minimizing crossing bytes among the
    contiguous partitions whose slowest stage costs at most ``(1 + balance) × best``."""
    n = len(costs)
    if stages == 1:
        return []
    limit = best_bottleneck(costs, stages) * (1 + balance) * (1 + 1e-9)
    prefix = np.concatenate([[0.0], np.cumsum(costs)])
    inf = math.inf
    g = np.full(n + 1, inf)
    mean = prefix[n] / stages
    # Ties in bytes go to the more even split: a penalty far below one byte per stage.
    tie = 1e-3 / max(mean, 1e-30)
    g[1:] = np.where(prefix[1:] <= limit, np.abs(prefix[1:] - mean) * tie, inf)  # nodes [0, j)
    back: list[np.ndarray] = []
    for _ in range(2, stages + 1):
        new = np.full(n + 1, inf)
        arg = np.full(n + 1, -1)
        base = g + np.concatenate([cross, [inf]])  # cut at i costs cross[i]
        base[0] = inf  # every stage is non-empty
        for j in range(1, n + 1):
            ok = (prefix[j] - prefix[:j] <= limit) & np.isfinite(base[:j])
            if ok.any():
                candidates = np.where(
                    ok, base[:j] + np.abs(prefix[j] - prefix[:j] - mean) * tie, inf
                )
                i = int(np.argmin(candidates))
                new[j], arg[j] = candidates[i], i
        back.append(arg)
        g = new
    if not np.isfinite(g[n]):
        raise InputError(f"partition: cannot cut {n} nodes into {stages} balanced stages")
    cuts, j = [], n
    for arg in reversed(back):
        j = int(arg[j])
        cuts.append(j)
    return sorted(cuts)


def _plan(
    nodes: list[ir.Node], stage_of: list[int], costs: np.ndarray, graph: ir.Graph, stages: int
) -> dict:
    """The stage graph: per stage its cost and interface, per edge the values that flow."""
    info = [
        {"stage": s, "nodes": 0, "flops": 0, "cost_s": 0.0, "inputs": [], "outputs": []}
        for s in range(stages)
    ]
    position = {id(n): i for i, n in enumerate(nodes)}
    graph_inputs = {v.name for v in graph.inputs}
    graph_outputs = {v.name for v in graph.outputs}
    edges: dict[tuple[int, int], dict] = {}
    for i, node in enumerate(nodes):
        s = stage_of[i]
        info[s]["nodes"] += 1
        info[s]["flops"] += node_flops(node) or 0
        info[s]["cost_s"] += float(costs[i])
        for value in node.inputs:
            if value is None or value.is_initializer() or value.const_value is not None:
                continue
            producer = value.producer()
            if producer is None:
                if value.name in graph_inputs and value.name not in info[s]["inputs"]:
                    info[s]["inputs"].append(value.name)
                continue
            if _is_constant_node(producer) or id(producer) not in position:
                continue
            src = stage_of[position[id(producer)]]
            if src != s and value.name not in info[s]["inputs"]:
                info[s]["inputs"].append(value.name)
                edge = edges.setdefault((src, s), {"from": src, "to": s, "values": [], "bytes": 0})
                edge["values"].append(value.name)
                edge["bytes"] += int(value_bytes(value))
                if value.name not in info[src]["outputs"]:
                    info[src]["outputs"].append(value.name)
        for value in node.outputs:
            if value.name in graph_outputs and value.name not in info[s]["outputs"]:
                info[s]["outputs"].append(value.name)
    stage_graph = nx.DiGraph()
    stage_graph.add_nodes_from(range(stages))
    stage_graph.add_edges_from(edges)
    if not nx.is_directed_acyclic_graph(stage_graph):  # contiguous runs cannot do this
        raise InputError("partition: the stage graph has a cycle")
    return {
        "mode": "pipeline",
        "stages": info,
        "edges": [edges[k] for k in sorted(edges)],
        "crossing_bytes": sum(e["bytes"] for e in edges.values()),
        "graph_inputs": [v.name for v in graph.inputs if not v.is_initializer()],
        "graph_outputs": [v.name for v in graph.outputs],
    }


def _infer_missing_shapes(model: ir.Model) -> None:
    """Fills in the shape and dtype of values that lack them (ONNX shape inference on a copy):
    the cost model reads sizes from them. Nothing else changes."""
    values = [v for n in model.graph for v in n.outputs]
    if all(v.shape is not None and v.dtype is not None for v in values):
        return
    inferred = ir.passes.common.ShapeInferencePass()(model.clone()).model
    found = {v.name: v for n in inferred.graph for v in n.outputs}
    for value in values:
        twin = found.get(value.name)
        if twin is not None:
            value.shape = value.shape if value.shape is not None else twin.shape
            value.dtype = value.dtype if value.dtype is not None else twin.dtype


class PartitionPass(ir.passes.InPlacePass):
    """Splits the model across devices or processes: pipeline stages, or tensor-parallel shards.

    ``mode=pipeline``: ``stages`` contiguous runs of a topological order, balanced by the
    roofline cost model (or a measured ``profile``, a JSON file of seconds per node name) within
    ``balance``, with the fewest activation bytes crossing between stages. Annotates nodes and
    records the stage graph; numerics do not change. ``build`` then compiles each stage into its
    own library. Refuses more stages than nodes.

    ``mode=tensor``: splits every MatMul/Gemm weight ``shards`` ways (0 means 2), Megatron-style
    (:mod:`passes.partition.tensor`): column-sharded matmuls, the ops after them on the slices,
    row-sharded matmuls that end a block with one all-reduce (``Sum``); an all-gather (``Concat``)
    where no block pairs. Rewrites the graph (equal up to summation order) and annotates its
    segments; ``build`` compiles one library per segment and shard. Refuses ``shards < 2`` and
    a model none of whose weights ``shards`` divides.
    """

    name = "partition"

    def __init__(
        self,
        *,
        stages: int = 2,
        mode: Literal["pipeline", "tensor"] = "pipeline",
        balance: float = 0.05,
        profile: str = "",
        shards: int = 0,
    ) -> None:
        super().__init__()
        if stages < 1:
            raise InputError(f"partition: stages must be at least 1, not {stages}")
        if balance < 0:
            raise InputError(f"partition: balance must be non-negative, not {balance}")
        if mode == "tensor":
            shards = shards or 2  # 0: the default
            if shards < 2:
                raise InputError(f"partition(mode=tensor): shards must be at least 2, not {shards}")
        elif shards:
            raise InputError(
                f"partition: shards={shards} is an option of mode=tensor (mode={mode} takes stages)"
            )
        self.stages, self.mode, self.balance = stages, mode, balance
        self.profile, self.shards = profile, shards

    def _profile(self) -> dict[str, float] | None:
        if not self.profile:
            return None
        try:
            data = json.loads(Path(self.profile).read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"partition: cannot read the profile {self.profile}: {e}") from e
        if not isinstance(data, dict):
            raise InputError(f"partition: {self.profile} must hold a JSON object of seconds")
        return {str(k): float(v) for k, v in data.items()}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        _infer_missing_shapes(model)
        if self.mode == "tensor":
            from passes.partition.tensor import shard_model

            model.metadata_props[PLAN_KEY] = json.dumps(shard_model(model, self.shards))
            return ir.passes.PassResult(model, True)
        nodes = topological_nodes(model.graph)
        if len(nodes) < self.stages:
            raise InputError(
                f"partition: {self.stages} stages asked for a graph of {len(nodes)} nodes"
            )
        costs = node_costs(nodes, self._profile())
        cuts = choose_cuts(costs, crossing_bytes(nodes), self.stages, self.balance)
        bounds = [0, *cuts, len(nodes)]
        stage_of = [s for s in range(self.stages) for _ in range(bounds[s], bounds[s + 1])]
        for node, s in zip(nodes, stage_of, strict=True):
            node.metadata_props[STAGE_KEY] = str(s)
        plan = _plan(nodes, stage_of, costs, model.graph, self.stages)
        plan["balance"] = self.balance
        plan["cost_model"] = "profile" if self.profile else "roofline"
        model.metadata_props[PLAN_KEY] = json.dumps(plan)
        return ir.passes.PassResult(model, True)
