"""``lowrank``: ``x · W`` -> ``(x · A) · B`` with ``W ≈ A B`` of rank ``r`` (truncated SVD).

For a constant weight ``W`` ``[K, N]`` with singular values ``σ₁ ≥ σ₂ ≥ …``, the best rank-``r``
approximation (Eckart–Young) has relative Frobenius error ``√(Σ_{i>r} σᵢ²) / √(Σ σᵢ²)``; the
pass picks the smallest ``r`` whose error is within ``budget`` and splits ``√σ`` between the
factors: ``A = U_r √Σ_r`` ``[K, r]``, ``B = √Σ_r V_rᵀ`` ``[r, N]``.

``method=activation`` minimizes the error of the layer's *outputs* on the calibration data
instead: with ``H = XᵀX = L Lᵀ`` (Cholesky, damped), ``‖X (W − Ŵ)‖ = ‖Lᵀ (W − Ŵ)‖``, so the SVD is
taken of ``Lᵀ W`` and mapped back: ``A = L⁻ᵀ U_r √Σ_r``. Directions the inputs never use cost
nothing, which allows lower ranks at the same output error.

A weight is factorized only when ``r (K + N) ≤ (1 − min_saving) K N``: both FLOPs and bytes
drop by at least ``min_saving``. Records per weight (``compiler.lowrank`` metadata): shape,
rank, error, parameters before and after.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx_ir as ir

from compiler.errors import InputError
from compiler.ir_utils import add_initializer, name_selected, read_records, write_records

__all__ = ["RECORD_KEY", "LowRankPass", "lowrank_records"]

RECORD_KEY = "compiler.lowrank"


def lowrank_records(model: ir.Model) -> list[dict]:
    """The per-weight records the ``lowrank`` pass left in ``model``'s metadata."""
    return read_records(model, RECORD_KEY)


def _weight(node: ir.Node) -> np.ndarray | None:
    """``W`` ``[K, N]`` of ``MatMul(x, W)`` / ``Gemm(x, W)`` (transB = 0) with a constant W."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
        return None
    if node.op_type == "Gemm" and (
        node.attributes.get_int("transA", 0)
        or node.attributes.get_int("transB", 0)
        or node.attributes.get_float("alpha", 1.0) != 1.0
    ):
        return None
    value = node.inputs[1]
    if value is None or value.const_value is None or not value.is_initializer():
        return None
    w = value.const_value.numpy()
    if w.ndim != 2 or w.dtype != np.float32:
        return None
    return w


def rank_for(singular: np.ndarray, budget: float) -> tuple[int, float]:
    """The smallest rank whose relative Frobenius error is ≤ ``budget``, and that error."""
    energy = singular.astype(np.float64) ** 2
    total = energy.sum()
    if total == 0:
        return 1, 0.0
    tail = np.sqrt(np.maximum(total - np.cumsum(energy), 0.0) / total)  # error after r = i + 1
    rank = int(np.argmax(tail <= budget)) + 1 if (tail <= budget).any() else len(singular)
    return rank, float(tail[rank - 1])


class LowRankPass(ir.passes.InPlacePass):
    """Factorizes MatMul/Gemm weights into two thinner matmuls where it saves FLOPs and bytes."""

    name = "lowrank"
    lossy = True

    def __init__(
        self,
        *,
        budget: float = 0.01,
        method: Literal["svd", "activation"] = "svd",
        min_saving: float = 0.1,
        include: str = "",
        exclude: str = "",
        damp: float = 0.01,
        samples: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < budget < 1.0:
            raise InputError(f"lowrank: budget must be in (0, 1), not {budget}")
        self.budget, self.method, self.min_saving = budget, method, min_saving
        self.include, self.exclude, self.damp, self.samples = include, exclude, damp, samples
        self.context = None  # set by the pass manager: calibration data (method=activation)

    def _candidates(self, graph: ir.Graph) -> list[tuple[ir.Node, np.ndarray]]:
        found = []
        for node in graph:
            if not name_selected(node.name, self.include, self.exclude):
                continue
            w = _weight(node)
            if w is not None and len(node.inputs[1].uses()) == 1:
                found.append((node, w))
        return found

    def _grams(self, model: ir.Model, nodes: list[ir.Node]) -> dict[str, np.ndarray]:
        if self.method != "activation":
            return {}
        from compiler.calibration import calibration_feeds, input_gram_matrices

        feeds = calibration_feeds(self.context, "lowrank(method=activation)", self.samples)
        names = sorted({n.inputs[0].name for n in nodes})
        stats = input_gram_matrices(model, feeds, names)
        return {name: s.gram for name, s in stats.items()}

    def _factors(self, w: np.ndarray, gram: np.ndarray | None):
        """``(A, B, rank, error)``; the error is relative, on outputs when ``gram`` is given."""
        w64 = w.astype(np.float64)
        if gram is None:
            u, s, vt = np.linalg.svd(w64, full_matrices=False)
            rank, error = rank_for(s, self.budget)
            root = np.sqrt(s[:rank])
            return u[:, :rank] * root, root[:, None] * vt[:rank], rank, error
        h = gram + self.damp * max(float(np.diag(gram).mean()), 1e-12) * np.eye(len(gram))
        lower = np.linalg.cholesky(h)
        u, s, vt = np.linalg.svd(lower.T @ w64, full_matrices=False)
        rank, error = rank_for(s, self.budget)
        root = np.sqrt(s[:rank])
        a = np.linalg.solve(lower.T, u[:, :rank] * root)
        return a, root[:, None] * vt[:rank], rank, error

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        candidates = self._candidates(graph)
        grams = self._grams(model, [n for n, _ in candidates])
        records = lowrank_records(model)
        changed = False
        for node, w in candidates:
            k, n = w.shape
            a, b, rank, error = self._factors(w, grams.get(node.inputs[0].name))
            before, after = k * n, rank * (k + n)
            record = {
                "node": node.name,
                "shape": [k, n],
                "rank": rank,
                "error": error,
                "parameters_before": before,
                "parameters_after": after if after <= (1 - self.min_saving) * before else before,
                "applied": after <= (1 - self.min_saving) * before,
            }
            records.append(record)
            if not record["applied"]:
                continue
            stem = node.inputs[1].name or node.name
            first = ir.node(
                "MatMul",
                [node.inputs[0], add_initializer(graph, f"{stem}_lr_a", a.astype(np.float32))],
            )
            second_inputs = [
                first.outputs[0],
                add_initializer(graph, f"{stem}_lr_b", b.astype(np.float32)),
            ]
            if node.op_type == "Gemm":
                second_inputs += list(node.inputs[2:])
                second = ir.node("Gemm", second_inputs, attributes=dict(node.attributes))
            else:
                second = ir.node("MatMul", second_inputs)
            second.name = node.name
            old_weight = node.inputs[1]
            ir.convenience.replace_nodes_and_values(
                graph, node, [node], [first, second], node.outputs, second.outputs
            )
            if not old_weight.uses():
                graph.initializers.pop(old_weight.name, None)
            changed = True
        write_records(model, RECORD_KEY, records)
        return ir.passes.PassResult(model, modified=changed)
