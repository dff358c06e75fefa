"""``quantize``: weight-only int4/int8 quantization of MatMul weights into ``MatMulNBits``.

Every ``MatMul(A, W)`` whose weight is a float32 initializer ``[K, N]`` — or ``Transpose`` of an
initializer ``[N, K]``, the tied-embedding LM head — and every ``Gemm(A, B[, C])`` with a constant
``B`` (alpha 1, A not transposed; C becomes an ``Add``) becomes ``com.microsoft::MatMulNBits`` with
the codes packed (two int4 codes per byte) and float32 scales (see
:mod:`passes.quantize.matmul_nbits`) — except int8 per output channel (``bits=8, group=0``), which
is the standard ``MatMul(A, DequantizeLinear(W_q, scales, axis=1))``. With ``embeddings`` (the
default), every embedding lookup ``Gather(table, ids)`` on a float32 ``[V, K]`` initializer becomes
``com.microsoft::GatherBlockQuantized`` on the same grid (rows packed like MatMulNBits' rows);
a table that is also a tied LM head reuses the head's codes, so both read one quantized matrix.
Both onnxruntime and the TVM backend run these ops; the TVM backend keeps the codes packed and
dequantizes inside its kernels.

Methods (``method=``):

* ``rtn``: round to nearest on the group grid (:mod:`passes.quantize.grid`);
* ``gptq``: error-aware rounding (:mod:`passes.quantize.gptq`) from the Gram matrix ``XᵀX`` of
  each layer's inputs on the calibration set (``build --calibration``), measured on the fp32
  model. GPTQ was chosen over AWQ-style scaling because it changes only the rounding, so the
  output stays a plain ``MatMulNBits`` that both runtimes run unchanged.

  Plain GPTQ *hurt* SmolLM2: it moves rounding error into directions that ordinary tokens
  rarely use, and the first token of every sequence — the attention sink, whose values most
  heads read — lives there (v_proj alone went from 40.5 perplexity with RTN to 50.5 with GPTQ;
  fp32 39.2). The objective therefore adds the Gram matrix of first positions with weight
  ``first_weight`` (each term normalized by its mean diagonal): v_proj then reaches 38.7 and
  the whole model 46.2 instead of 60.5 for asymmetric RTN (4 held-out windows, ``tools/eval``).

Options:

* ``bits`` (4 or 8), ``group`` (columns per scale; a power of two ≥ 16, or 0 for one scale per
  output channel), ``symmetric``, ``method`` (above), ``damp`` (GPTQ's diagonal damping),
  ``samples`` (calibration samples to use; 0 = all), ``first_weight`` (see ``gptq``);
* selection: ``include``/``exclude`` (regular expressions searched in node names; empty includes
  everything / excludes nothing), ``ops`` (a regular expression searched in op types —
  ``Gemm``, ``'MatMul|Gather'``; empty: MatMul, Gemm and, with ``embeddings``, embedding
  Gathers);
* W8A8 (int8 weights *and* activations, :mod:`passes.quantize.w8a8`; needs ``bits=8, group=0``):
  ``activations`` (``dynamic`` or ``static``), ``ranges`` (static calibration: ``minmax``,
  ``percentile`` or ``entropy``) with ``percentile``, ``granularity`` (``tensor``: one activation
  scale per tensor; ``token``: one grid per row, computed at run time, with
  ``activations=dynamic``) and ``smooth`` (SmoothQuant's α, :mod:`passes.quantize.smooth`: moves
  activation outliers into the weights first; 0 = off; needs calibration).

* ``accuracy_level`` (``MatMulNBits``' attribute, onnxruntime's meaning): 0 (default) keeps
  float32 activations; 4 lets the runtime quantize activations to int8 per block and sum
  integer products — onnxruntime's int8 kernels, and the TVM backend's VNNI decode GEMV
  (:mod:`backends.tvm.int8_dot_kernels`; ~2.5× the float kernel with the weights in cache,
  1.0–1.4× from DRAM here), at a relative output error of ~0.5% from the activation rounding.

The pass records, per quantized layer, the relative weight error ``‖W − Ŵ‖/‖W‖`` and — with
calibration data — the relative output error ``√(tr(ΔW H ΔWᵀ) / tr(W H Wᵀ))`` (``H``: the
calibration Gram matrix ``XᵀX`` with first positions weighted as for GPTQ; the error of ``X Wᵀ``)
in the model metadata ``compiler.quantize``.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Literal

import numpy as np
import onnx_ir as ir

from compiler.errors import InputError
from compiler.ir_utils import (
    add_initializer,
    drop_unused,
    name_selected,
    read_records,
    write_records,
)
from passes.quantize.gptq import quantize_gptq
from passes.quantize.grid import QuantizedWeight, quantize_rtn
from passes.quantize.matmul_nbits import block_size_for, pack_matmul_nbits
from passes.quantize.smooth import smooth_inputs
from passes.quantize.w8a8 import activation_grid, emit_w8a8

__all__ = ["RECORD_KEY", "QuantizePass", "quantize_records"]

RECORD_KEY = "compiler.quantize"
MS_DOMAIN = "com.microsoft"


@dataclasses.dataclass
class _Target:
    node: ir.Node
    weight: np.ndarray  # [N, K] float32: rows are output channels
    sources: list[ir.Value]  # the initializer (and Transpose output) the weight came from
    bias: ir.Value | None = None  # Gemm's C, added after the quantized matmul


def _constant_2d(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or not value.is_initializer():
        return None
    if value.const_value.dtype != ir.DataType.FLOAT or len(value.const_value.shape) != 2:
        return None
    return value.const_value.numpy()


def _gemm_target(node: ir.Node) -> _Target | None:
    """``Gemm(A, B[, C])`` with alpha = 1, no transposed A and a constant 2-D B."""
    attrs = node.attributes
    if attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0:
        return None
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and attrs.get_float("beta", 1.0) != 1.0:
        return None
    weight = _constant_2d(node.inputs[1])
    if weight is None:
        return None
    rows = weight if attrs.get_int("transB", 0) else weight.T
    return _Target(node, np.ascontiguousarray(rows), [node.inputs[1]], bias)


def _targets(graph: ir.Graph, include: str, exclude: str) -> list[_Target]:
    found = []
    for node in graph:
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
            continue
        if not name_selected(node.name, include, exclude):
            continue
        if node.op_type == "Gemm":
            target = _gemm_target(node)
            if target is not None:
                found.append(target)
            continue
        weight_value = node.inputs[1]
        weight = _constant_2d(weight_value)
        if weight is not None:
            found.append(_Target(node, np.ascontiguousarray(weight.T), [weight_value]))
            continue
        producer = weight_value.producer() if weight_value is not None else None
        if producer is not None and producer.op_type == "Transpose" and producer.domain == "":
            perm = producer.attributes.get_ints("perm", None)
            table = _constant_2d(producer.inputs[0])
            if table is not None and list(perm or [1, 0]) == [1, 0]:
                found.append(_Target(node, table, [weight_value, producer.inputs[0]]))
    return [t for t in found if t.weight.shape[1] >= 16]


def _relative(delta: np.ndarray, reference: np.ndarray, gram: np.ndarray | None) -> float:
    if gram is None:
        return float(np.linalg.norm(delta) / max(np.linalg.norm(reference), 1e-30))
    d = delta.astype(np.float64)
    w = reference.astype(np.float64)
    num = float(((d @ gram) * d).sum())  # tr(ΔW H ΔWᵀ)
    den = float(((w @ gram) * w).sum())
    return float(np.sqrt(max(num, 0.0) / max(den, 1e-300)))


def _objective(stats, first_weight: float) -> np.ndarray:
    """The Hessian GPTQ minimizes: ``H/h̄ + w · H₀/h̄₀`` (``h̄`` = mean diagonal, ``H₀`` over the
    first position of each sequence only); ``w = 0`` is plain GPTQ."""
    gram = stats.gram / max(float(np.diag(stats.gram).mean()), 1e-30)
    if first_weight <= 0:
        return gram
    first = stats.first_gram / max(float(np.diag(stats.first_gram).mean()), 1e-30)
    return gram + first_weight * first


def quantize_records(model: ir.Model) -> list[dict]:
    """The per-layer records the ``quantize`` pass left in ``model``'s metadata."""
    return read_records(model, RECORD_KEY)


class QuantizePass(ir.passes.InPlacePass):
    """Weight-only int4/int8 quantization of MatMul weights (MatMulNBits), by RTN or GPTQ."""

    name = "quantize"
    lossy = True
    record_key = RECORD_KEY

    def __init__(
        self,
        *,
        bits: Literal[4, 8] = 4,
        group: int = 128,
        symmetric: bool = True,
        method: Literal["rtn", "gptq"] = "rtn",
        include: str = "",
        exclude: str = "",
        ops: str = "",
        damp: float = 0.01,
        samples: int = 0,
        embeddings: bool = True,
        activations: Literal["none", "dynamic", "static"] = "none",
        ranges: Literal["minmax", "percentile", "entropy"] = "minmax",
        percentile: float = 99.99,
        first_weight: float = 0.1,
        smooth: float = 0.0,
        granularity: Literal["tensor", "token"] = "tensor",
        accuracy_level: Literal[0, 4] = 0,
    ) -> None:
        super().__init__()
        if group != 0 and (group < 16 or group & (group - 1)):
            raise InputError(f"quantize: group must be 0 or a power of two >= 16, not {group}")
        for option, pattern in (("include", include), ("exclude", exclude), ("ops", ops)):
            try:
                re.compile(pattern)
            except re.error as e:
                raise InputError(f"quantize: {option}={pattern!r} is not a regex: {e}") from e
        self.bits, self.group, self.symmetric, self.method = bits, group, symmetric, method
        self.include, self.exclude, self.damp, self.samples = include, exclude, damp, samples
        self.ops = ops
        self.embeddings = embeddings
        self.activations, self.ranges, self.percentile = activations, ranges, percentile
        self.first_weight = first_weight
        if not 0.0 <= smooth <= 1.0:
            raise InputError(f"quantize: smooth is SmoothQuant's alpha in [0, 1], not {smooth}")
        if smooth and activations == "none":
            raise InputError(
                "quantize(smooth=...) migrates activation outliers for W8A8: give "
                "activations=dynamic or static"
            )
        self.smooth = smooth
        if granularity == "token" and activations != "dynamic":
            raise InputError(
                "quantize(granularity=token) computes a scale per token at run time: "
                "give activations=dynamic"
            )
        self.granularity = granularity
        if activations != "none" and (bits, group, symmetric) != (8, 0, True):
            raise InputError(
                f"quantize(activations={activations}) quantizes weights to int8 per channel: "
                "give bits=8, group=0, symmetric=true"
            )
        if accuracy_level not in (0, 4):
            raise InputError(
                f"quantize: accuracy_level is 0 (float activations) or 4 (int8 activations), "
                f"not {accuracy_level}"
            )
        if accuracy_level and (activations != "none" or (bits == 8 and group == 0)):
            raise InputError(
                "quantize(accuracy_level=4) applies to MatMulNBits (group > 0, weight-only); "
                "W8A8 quantizes activations already"
            )
        self.accuracy_level = accuracy_level
        self.context = None  # set by the pass manager: calibration data
        self.skip: frozenset[str] = frozenset()  # nodes left in float (per-layer rollback)

    def _grams(self, model: ir.Model, targets: list[_Target]) -> dict[str, np.ndarray]:
        from compiler.calibration import calibration_feeds, input_gram_matrices

        if self.method != "gptq" and getattr(self.context, "calibration", None) is None:
            return {}  # RTN: calibration only adds output errors to the records
        feeds = calibration_feeds(self.context, "quantize(method=gptq)", self.samples)
        names = sorted({t.node.inputs[0].name for t in targets})
        stats = input_gram_matrices(model, feeds, names)
        return {name: _objective(s, self.first_weight) for name, s in stats.items()}

    def _quantize(self, target: _Target, gram: np.ndarray | None) -> QuantizedWeight:
        if self.method == "gptq":
            return quantize_gptq(
                target.weight,
                gram,
                self.bits,
                self.group,
                symmetric=self.symmetric,
                damp=self.damp,
            )
        return quantize_rtn(target.weight, self.bits, self.group, symmetric=self.symmetric)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        targets = [
            t
            for t in _targets(graph, self.include, self.exclude)
            if t.node.name not in self.skip and re.search(self.ops, t.node.op_type)
        ]
        tables = _gather_targets(graph, self.include, self.exclude) if self.embeddings else []
        tables = [
            (node, table)
            for node, table in tables
            if node.name not in self.skip and re.search(self.ops, node.op_type)
        ]
        if not targets and not tables:
            return ir.passes.PassResult(model, modified=False)
        smoothing = self._smooth(model, targets)
        grams = self._grams(model, targets)
        ranges = self._activation_ranges(model, targets)
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        records = quantize_records(model)
        by_table: dict[int, QuantizedWeight] = {}  # tied heads: the embedding reuses their codes
        for target in targets:
            node = target.node
            gram = grams.get(node.inputs[0].name)
            quantized = self._quantize(target, gram)
            by_table[id(target.sources[-1])] = quantized
            if self.activations != "none":
                self._replace_w8a8(graph, target, quantized, ranges)
            elif self.bits == 8 and self.group == 0:
                legacy = model.opset_imports.get("", 1) < 13  # per-axis DequantizeLinear: 13+
                _replace(graph, target, _dequantize_nodes(graph, target, quantized, legacy))
            else:
                _replace(graph, target, self._nbits_nodes(graph, target, quantized))
            record = self._record(node, target.sources[-1], target.weight, quantized, gram)
            records.append({**record, **smoothing.get(node.name, {})})
        for node, table in tables:
            weight = table.const_value.numpy()
            quantized = by_table.get(id(table)) or quantize_rtn(
                weight, self.bits, self.group, symmetric=self.symmetric
            )
            self._replace_gather(graph, node, table, quantized)
            drop_unused(graph, [table])
            record = self._record(node, table, weight, quantized, None)
            record["method"] = "tied" if id(table) in by_table else "rtn"
            records.append(record)
        write_records(model, RECORD_KEY, records)
        return ir.passes.PassResult(model, modified=True)

    def _smooth(self, model: ir.Model, targets: list[_Target]) -> dict[str, dict]:
        """SmoothQuant (:mod:`passes.quantize.smooth`): rescales the targets' inputs and weights
        in place; the per-node records."""
        if not self.smooth:
            return {}
        from compiler.calibration import calibration_feeds, input_gram_matrices

        feeds = calibration_feeds(self.context, "quantize(smooth=...)", self.samples)
        names = sorted({t.node.inputs[0].name for t in targets})
        stats = input_gram_matrices(model, feeds, names)
        x_max = {name: entry.abs_max for name, entry in stats.items()}
        return smooth_inputs(model.graph, targets, x_max, self.smooth)

    def _activation_ranges(
        self, model: ir.Model, targets: list[_Target]
    ) -> dict[str, tuple[float, float]]:
        if self.activations != "static":
            return {}
        from compiler.calibration import activation_ranges, calibration_feeds

        feeds = calibration_feeds(self.context, "quantize(activations=static)", self.samples)
        names = sorted({t.node.inputs[0].name for t in targets})
        return activation_ranges(
            model, feeds, names, method=self.ranges, percentile=self.percentile
        )

    def _nbits_nodes(
        self, graph: ir.Graph, target: _Target, quantized: QuantizedWeight
    ) -> list[ir.Node]:
        """``MatMulNBits(A, codes, scales[, zero points])``."""
        node = target.node
        n, k = target.weight.shape
        block = block_size_for(self.group, k)
        packed, scales, zeros = pack_matmul_nbits(quantized, block)
        stem = target.sources[-1].name or node.name
        inputs = [
            node.inputs[0],
            add_initializer(graph, f"{stem}_q{self.bits}", packed),
            add_initializer(graph, f"{stem}_scales", scales),
        ]
        if zeros is not None:
            inputs.append(add_initializer(graph, f"{stem}_zero_points", zeros))
        attributes = {"K": k, "N": n, "bits": self.bits, "block_size": block}
        if self.accuracy_level:
            attributes["accuracy_level"] = self.accuracy_level
        return [ir.node("MatMulNBits", inputs, attributes, domain=MS_DOMAIN, name=node.name)]

    def _replace_w8a8(self, graph, target: _Target, quantized, ranges) -> None:
        node = target.node
        activation = None
        if self.activations == "static":
            activation = activation_grid(*ranges[node.inputs[0].name])
        stem = target.sources[-1].name or node.name
        per_token = self.granularity == "token"
        nodes = emit_w8a8(graph, node, quantized, stem, activation, per_token=per_token)
        _replace(graph, target, nodes)

    def without_nodes(self, names: set[str]) -> QuantizePass:
        """This pass, leaving the named nodes in float (the pass manager's per-layer rollback)."""
        clone = copy.copy(self)
        clone.skip = frozenset(self.skip | set(names))
        return clone

    @staticmethod
    def layer_errors(records: list[dict]) -> dict[str, float]:
        """Per node: the output error on calibration data, else the weight error."""
        return {
            r["node"]: r["output_error"] if r.get("output_error") is not None else r["weight_error"]
            for r in records
        }

    def _record(self, node, source, weight, quantized, gram) -> dict:
        delta = quantized.dequantize() - weight
        return {
            "node": node.name,
            "op": node.op_type,
            "weight": source.name,
            "shape": list(weight.shape),
            "bits": self.bits,
            "group": quantized.group,
            "symmetric": self.symmetric,
            "method": self.method,
            "activations": self.activations,
            **({"granularity": self.granularity} if self.activations == "dynamic" else {}),
            "weight_error": _relative(delta, weight, None),
            "output_error": _relative(delta, weight, gram) if gram is not None else None,
        }

    def _replace_gather(
        self, graph: ir.Graph, node: ir.Node, table: ir.Value, quantized: QuantizedWeight
    ) -> None:
        """``Gather(table, ids)`` -> ``GatherBlockQuantized(codes, ids, scales[, zeros])``."""
        k = quantized.shape[1]
        block = block_size_for(self.group, k)
        codes = quantized.codes
        data = _pack_rows(codes) if self.bits == 4 else codes
        scales = np.ascontiguousarray(quantized.scales)
        stem = table.name or node.name
        inputs = [
            add_initializer(graph, f"{stem}_rows_q{self.bits}", data),
            node.inputs[1],
            add_initializer(graph, f"{stem}_rows_scales", scales),
        ]
        if not self.symmetric:
            zeros = quantized.zero_points
            zeros = _pack_rows(zeros) if self.bits == 4 else zeros
            inputs.append(add_initializer(graph, f"{stem}_rows_zero_points", zeros))
        new = ir.node(
            "GatherBlockQuantized",
            inputs,
            attributes={
                "gather_axis": 0,
                "quantize_axis": 1,
                "block_size": block,
                "bits": self.bits,
            },
            domain=MS_DOMAIN,
            name=node.name,
        )
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], [new], node.outputs, new.outputs
        )


def _pack_rows(codes: np.ndarray) -> np.ndarray:
    """4-bit codes ``[R, C]`` -> bytes ``[R, ⌈C/2⌉]``, element 2i in the low nibble."""
    if codes.shape[1] % 2:
        codes = np.concatenate([codes, np.zeros((codes.shape[0], 1), codes.dtype)], axis=1)
    return np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4))


def _gather_targets(graph: ir.Graph, include: str, exclude: str) -> list[tuple[ir.Node, ir.Value]]:
    """Embedding lookups: ``Gather(table, ids)`` on axis 0 of a float32 ``[V, K]`` initializer."""
    found = []
    for node in graph:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
            continue
        if not name_selected(node.name, include, exclude):
            continue
        if node.attributes.get_int("axis", 0) != 0:
            continue
        table = node.inputs[0]
        weight = _constant_2d(table)
        if weight is not None and weight.shape[1] >= 16:
            found.append((node, table))
    return found


def _dequantize_nodes(
    graph: ir.Graph, target: _Target, quantized: QuantizedWeight, legacy: bool = False
) -> list[ir.Node]:
    """int8 per output channel as standard ONNX: ``MatMul(A, DequantizeLinear(W_q, s[, z]))``
    with ``W_q`` int8 ``[K, N]`` and one scale (and zero point) per column, ``axis=1``.
    (``MatMulNBits`` would pad K to a power of two for a single block per row.)

    ``legacy`` (models below opset 13, which has no per-axis ``DequantizeLinear``):
    ``MatMul(A, (Cast(W_q) − z) · s)`` — the same values from ops every opset has."""
    node = target.node
    stem = target.sources[-1].name or node.name
    codes = (quantized.codes.astype(np.int16) - 128).astype(np.int8).T  # [K, N]
    inputs = [
        add_initializer(graph, f"{stem}_q8", codes),
        add_initializer(graph, f"{stem}_scales", quantized.scales[:, 0].astype(np.float32)),
    ]
    if not quantized.symmetric:
        zeros = (quantized.zero_points[:, 0].astype(np.int16) - 128).astype(np.int8)
        inputs.append(add_initializer(graph, f"{stem}_zero_points", zeros))
    if legacy:
        nodes = [ir.node("Cast", [inputs[0]], attributes={"to": int(ir.DataType.FLOAT)})]
        if len(inputs) > 2:
            zero = ir.node("Cast", [inputs[2]], attributes={"to": int(ir.DataType.FLOAT)})
            nodes += [zero, ir.node("Sub", [nodes[0].outputs[0], zero.outputs[0]])]
        nodes.append(ir.node("Mul", [nodes[-1].outputs[0], inputs[1]]))
    else:
        nodes = [ir.node("DequantizeLinear", inputs, attributes={"axis": 1})]
    weight = nodes[-1].outputs[0]
    weight.shape, weight.dtype = ir.Shape(codes.shape), ir.DataType.FLOAT
    matmul = ir.node("MatMul", [node.inputs[0], weight], name=node.name)
    return [*nodes, matmul]


def _replace(graph: ir.Graph, target: _Target, nodes: list[ir.Node]) -> None:
    """Puts ``nodes`` (+ the Gemm bias) in place of the target's node; drops its old weight."""
    node = target.node
    if target.bias is not None:
        nodes.append(ir.node("Add", [nodes[-1].outputs[0], target.bias]))
    ir.convenience.replace_nodes_and_values(
        graph, node, [node], nodes, node.outputs, nodes[-1].outputs
    )
    drop_unused(graph, target.sources)
