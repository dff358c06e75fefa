"""Quantized matmuls in the TVM backend: packed weights in, dequantization inside the kernel.

Before import, :func:`lower_quantized` rewrites each ``com.microsoft::MatMulNBits`` (and
``GatherBlockQuantized``, the quantized embedding lookup; W8A8's ``MatMulInteger`` and per-channel
int8's ``DequantizeLinear`` + ``MatMul`` on constant int8 weights) whose weights are initializers
into
``compiler.tvm::PackedMatMul`` (``PackedGather``) with the codes re-laid out in tiles
(:mod:`backends.tvm.packed_kernels`; still ``bits`` per weight, plus float32 scales — per tile,
``[T, G, tile]``, for a ``MatMulNBits`` whose ``N`` fills whole tiles, else ``[G, N]``), so the
artifact's weights stay packed. Identical packed tensors are stored once (a tied
embedding/LM head quantized twice yields the same codes).

The importer converts ``PackedMatMul`` (:class:`PackedMatMul`) by the row count ``M`` of ``A``:
``M ≤ GEMV_MAX_ROWS`` (a decode step) calls the fused dequantize-GEMV kernel; larger ``M``
dequantizes the weight into a temporary and multiplies — panels for our GEMM kernel
(:mod:`backends.tvm.panel_gemm`), or ``[K, N]`` for the BLAS where ``N`` is too narrow for
panels (the dequantization, O(KN), is amortized over ``M`` rows; nothing is dequantized at load
time).

A ``MatMulNBits`` with ``accuracy_level=4`` (onnxruntime's "int8 compute": ``quantize(...,
accuracy_level=4)``) on a target with AVX512-VNNI is packed in the int8-dot layout instead, and
its decode-step GEMV quantizes the activations to int8 per group and sums integer products
(:mod:`backends.tvm.int8_dot_kernels`); larger ``M`` dequantizes from that layout as above.
A tied embedding keeps the tile layout, so such a head and its table are stored once each.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import onnx_ir as ir
from tvm import relax, tirx
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from backends.tvm.int8_dot_kernels import (
    int8_dot_gemv_func,
    pack_quads,
    round_activations,
    tile_grid,
)
from backends.tvm.int8_dot_kernels import supports as int8_dot_supports
from backends.tvm.packed_kernels import (
    dequantize_func,
    gather_rows,
    gemv_func,
    padded_codes,
    tile_channels,
)
from backends.tvm.panel_kernels import PANEL
from compiler.errors import BackendError
from compiler.ir_utils import add_initializer

__all__ = [
    "DOMAIN",
    "GEMV_MAX_ROWS",
    "QUANTIZED_OPS",
    "PackedGather",
    "PackedMatMul",
    "WeightTable",
    "lower_quantized",
    "pack_tiles",
]

DOMAIN = "compiler.tvm"
GEMV_MAX_ROWS = 4
INT8_ACCURACY_LEVEL = 4  # MatMulNBits' accuracy_level for int8 compute (onnxruntime's meaning)
# What is lowered (DequantizeLinear only when it feeds a MatMul's weight).
QUANTIZED_OPS = ("MatMulNBits", "GatherBlockQuantized", "MatMulInteger", "DequantizeLinear")


def pack_tiles(codes: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Codes ``[N, K]`` (uint8, one per weight) -> tiles ``[T, Kp, 16]`` (see packed_kernels)."""
    padded = padded_codes(codes, bits, group)
    tiles, kp = padded.shape[0] // tile_channels(bits), padded.shape[1]
    grid = padded.reshape(tiles, 8 // bits, 16, kp).transpose(0, 3, 1, 2)  # [T, Kp, halves, 16]
    if bits == 8:
        return np.ascontiguousarray(grid[:, :, 0, :])
    return np.ascontiguousarray(grid[:, :, 0, :] | (grid[:, :, 1, :] << 4))


def _unpack_nbits(b: np.ndarray, n: int, k: int, bits: int) -> np.ndarray:
    """MatMulNBits ``B`` ``[N, blocks, blob]`` -> codes ``[N, K]``."""
    flat = b.reshape(n, -1)
    if bits == 4:
        codes = np.empty((n, flat.shape[1] * 2), np.uint8)
        codes[:, 0::2], codes[:, 1::2] = flat & 15, flat >> 4
    else:
        codes = flat
    return codes[:, :k]


def _unpack_zero_points(z: np.ndarray, n: int, blocks: int, bits: int) -> np.ndarray:
    rows = z.reshape(n, -1)
    if bits == 4:
        both = np.empty((n, rows.shape[1] * 2), np.uint8)
        both[:, 0::2], both[:, 1::2] = rows & 15, rows >> 4
        rows = both
    return rows[:, :blocks]


def _drop_initializers(graph: ir.Graph, values: list[ir.Value | None]) -> None:
    for value in values:
        if value is not None and not value.uses() and value.is_initializer():
            graph.initializers.pop(value.name, None)


class WeightTable:
    """Registers packed initializers, reusing one for byte-identical arrays."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.by_digest: dict[str, ir.Value] = {}

    def add(self, name: str, array: np.ndarray) -> ir.Value:
        digest = hashlib.sha256(array.tobytes()).hexdigest() + str(array.shape) + str(array.dtype)
        if digest in self.by_digest:
            return self.by_digest[digest]
        value = add_initializer(self.graph, name, array)
        self.by_digest[digest] = value
        return value


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _lower_gather(node: ir.Node, weights: WeightTable) -> ir.Node:
    """GatherBlockQuantized (axis 0, blocks along the rows) -> PackedGather on tiles."""
    attrs = node.attributes
    bits, block = attrs.get_int("bits", 4), attrs["block_size"].as_int()
    data, scales = _const(node.inputs[0]), _const(node.inputs[2])
    zero_in = node.inputs[3] if len(node.inputs) > 3 else None
    zeros = _const(zero_in)
    where = f"node {node.name!r} (GatherBlockQuantized)"
    axes = (attrs.get_int("gather_axis", 0), attrs.get_int("quantize_axis", 1))
    if (
        bits not in (4, 8)
        or data is None
        or scales is None
        or data.ndim != 2
        or axes not in ((0, 1), (0, -1))
        or (zero_in is not None and zeros is None)
    ):
        raise BackendError(
            f"{where}: the TVM backend compiles 4/8-bit row gathers (gather_axis 0, quantize_axis"
            " 1) of constant uint8 data with constant scales and zero points"
        )
    n, groups = scales.shape
    k = data.shape[1] * 8 // bits
    if -(-k // block) != groups:
        raise BackendError(f"{where}: {groups} scale groups do not fit {k} columns of {block}")
    codes = _unpack_nbits(data, n, k, bits)
    group = min(block, k)
    stem = node.inputs[0].name or node.name
    inputs = [
        node.inputs[1],
        weights.add(f"{stem}_tiles", pack_tiles(codes, bits, group)),
        weights.add(f"{stem}_tile_scales", np.ascontiguousarray(scales.T.astype(np.float32))),
    ]
    if zeros is not None:
        grid = _unpack_zero_points(zeros, n, groups, bits).T.astype(np.float32)
        inputs.append(weights.add(f"{stem}_tile_zeros", np.ascontiguousarray(grid)))
    return ir.node(
        "PackedGather",
        inputs,
        attributes={"K": k, "N": n, "bits": bits, "group": group},
        domain=DOMAIN,
        name=node.name,
    )


def _lower_matmul_integer(graph: ir.Graph, node: ir.Node, weights: WeightTable) -> bool:
    """``Cast(MatMulInteger(a, B, a_zero), FLOAT)`` with a constant int8 ``B`` ``[K, N]`` (no
    weight zero point) -> ``PackedMatMul(float(a) − float(a_zero), B)`` on 8-bit tiles.

    Exact while the int32 sums stay below 2²⁴ in magnitude (fp32 integers); beyond, the float
    sum rounds like any fp32 GEMM (relative error ~1e-7).
    """
    b = _const(node.inputs[1])
    b_zero = _const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
    uses = list(node.outputs[0].uses())
    if b is None or b.dtype != np.int8 or b.ndim != 2 or (b_zero is not None and b_zero.any()):
        return False
    if len(uses) != 1 or uses[0][0].op_type != "Cast" or node.outputs[0].is_graph_output():
        return False
    cast = uses[0][0]
    if cast.attributes.get_int("to", 0) != int(ir.DataType.FLOAT):
        return False
    k, n = b.shape
    codes = (b.T.astype(np.int16) + 128).astype(np.uint8)
    stem = node.inputs[1].name or node.name
    to_float = {"to": int(ir.DataType.FLOAT)}
    a = ir.node("Cast", [node.inputs[0]], attributes=to_float)
    nodes = [a]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        zero = ir.node("Cast", [node.inputs[2]], attributes=to_float)
        centered = ir.node("Sub", [a.outputs[0], zero.outputs[0]])
        nodes += [zero, centered]
    matmul = ir.node(
        "PackedMatMul",
        [
            nodes[-1].outputs[0],
            weights.add(f"{stem}_tiles", pack_tiles(codes, 8, k)),
            weights.add(f"{stem}_tile_scales", np.ones((1, n), np.float32)),
        ],
        attributes={"K": k, "N": n, "bits": 8, "group": k},
        domain=DOMAIN,
        name=node.name,
    )
    nodes.append(matmul)
    old_weights = list(node.inputs[1:])
    ir.convenience.replace_nodes_and_values(
        graph, node, [node, cast], nodes, cast.outputs, matmul.outputs
    )
    _drop_initializers(graph, old_weights)
    return True


def _lower_dequantize_matmul(graph: ir.Graph, node: ir.Node, weights: WeightTable) -> bool:
    """``MatMul(A, DequantizeLinear(W_q, s[, z], axis=1))`` with constant int8 ``W_q`` ``[K, N]``
    and per-column ``s``/``z`` (``quantize(bits=8, group=0)``) -> ``PackedMatMul`` on 8-bit tiles
    (one group of K per channel)."""
    q, scale = _const(node.inputs[0]), _const(node.inputs[1])
    zero = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    uses = list(node.outputs[0].uses())
    if q is None or q.dtype != np.int8 or q.ndim != 2 or scale is None or scale.ndim != 1:
        return False
    if node.attributes.get_int("axis", 1) not in (1, -1) or (
        len(node.inputs) > 2 and node.inputs[2] is not None and zero is None
    ):
        return False
    if len(uses) != 1 or uses[0][0].op_type != "MatMul" or uses[0][1] != 1:
        return False
    if node.outputs[0].is_graph_output():
        return False
    matmul = uses[0][0]
    k, n = q.shape
    codes = (q.T.astype(np.int16) + 128).astype(np.uint8)
    stem = node.inputs[0].name or node.name
    inputs = [
        matmul.inputs[0],
        weights.add(f"{stem}_tiles", pack_tiles(codes, 8, k)),
        weights.add(f"{stem}_tile_scales", scale.astype(np.float32)[None]),
    ]
    if zero is not None and zero.any():
        inputs.append(weights.add(f"{stem}_tile_zeros", (zero.astype(np.float32) + 128)[None]))
    packed = ir.node(
        "PackedMatMul",
        inputs,
        attributes={"K": k, "N": n, "bits": 8, "group": k},
        domain=DOMAIN,
        name=matmul.name,
    )
    old_weights = list(node.inputs)
    ir.convenience.replace_nodes_and_values(
        graph, matmul, [node, matmul], [packed], matmul.outputs, packed.outputs
    )
    _drop_initializers(graph, old_weights)
    return True


def lower_quantized(model: ir.Model, *, int8_dot: bool = False) -> bool:
    """Rewrites quantized nodes of ``model`` in place (see module doc); True if any changed.

    ``int8_dot``: the target has AVX512-VNNI, so ``MatMulNBits`` with ``accuracy_level=4`` (int8
    activations) take the integer dot-product GEMV (:mod:`backends.tvm.int8_dot_kernels`).
    """
    graph = model.graph
    weights = WeightTable(graph)
    changed = False
    for node in list(graph):
        if node.op_type == "MatMulInteger" and node.domain in ("", "ai.onnx"):
            changed |= _lower_matmul_integer(graph, node, weights)
            continue
        if node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx"):
            changed |= _lower_dequantize_matmul(graph, node, weights)
            continue
        if node.domain != "com.microsoft":
            continue
        if node.op_type == "GatherBlockQuantized":
            old_inputs = list(node.inputs)
            new = _lower_gather(node, weights)
            ir.convenience.replace_nodes_and_values(
                graph, node, [node], [new], node.outputs, new.outputs
            )
            _drop_initializers(graph, old_inputs)
            changed = True
            continue
        if node.op_type != "MatMulNBits":
            continue
        attrs = node.attributes
        k, n = attrs["K"].as_int(), attrs["N"].as_int()
        bits, block = attrs["bits"].as_int(), attrs["block_size"].as_int()
        b, scales = _const(node.inputs[1]), _const(node.inputs[2])
        zero_in = node.inputs[3] if len(node.inputs) > 3 else None
        zeros = _const(zero_in)
        extra = [v for v in node.inputs[4:] if v is not None]
        where = f"node {node.name!r} (MatMulNBits)"
        if bits not in (4, 8) or b is None or scales is None or extra:
            raise BackendError(
                f"{where}: the TVM backend compiles 4/8-bit MatMulNBits with constant weights, "
                "scales and zero points, without g_idx or bias"
            )
        if zero_in is not None and (zeros is None or zeros.dtype != np.uint8):
            raise BackendError(f"{where}: zero points must be a constant uint8 tensor")
        blocks = -(-k // block)
        group = min(block, k)
        codes = _unpack_nbits(b, n, k, bits)
        scale_grid = np.ascontiguousarray(scales.reshape(n, blocks).T.astype(np.float32))
        stem = (node.inputs[1].name or node.name).removesuffix(f"_q{bits}")
        quads = (
            int8_dot
            and attrs.get_int("accuracy_level", 0) == INT8_ACCURACY_LEVEL
            and int8_dot_supports(n, bits, group)
        )
        layout = (
            (f"{stem}_quads", pack_quads(codes, bits, group))
            if quads
            else (
                f"{stem}_tiles",
                pack_tiles(codes, bits, group),
            )
        )
        # scales per tile (contiguous for a GEMV's tile) wherever N fills whole tiles
        tiled = quads or n % tile_channels(bits) == 0
        grid = tile_grid if tiled else lambda array, _bits: np.ascontiguousarray(array)
        inputs = [
            node.inputs[0],
            weights.add(*layout),
            weights.add(f"{stem}_tile_scales", grid(scale_grid, bits)),
        ]
        if zeros is not None:
            zero_grid = _unpack_zero_points(zeros, n, blocks, bits).T.astype(np.float32)
            inputs.append(weights.add(f"{stem}_tile_zeros", grid(zero_grid, bits)))
        new = ir.node(
            "PackedMatMul",
            inputs,
            attributes={"K": k, "N": n, "bits": bits, "group": group, "int8_dot": int(quads)},
            domain=DOMAIN,
            name=node.name,
        )
        old_weights = list(node.inputs[1:])
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], [new], node.outputs, new.outputs
        )
        _drop_initializers(graph, old_weights)
        changed = True
    if changed:
        model.opset_imports.setdefault(DOMAIN, 1)
    return changed


def _add(bb, func, name: str):
    return bb.add_func(func.with_attr("global_symbol", name), name)


def _packed_inputs(inputs, attr):
    """``(first input, [tiles, scales(, zeros)], K, N, bits, group, symmetric)`` of a packed op."""
    zeros = inputs[3] if len(inputs) > 3 else None
    weights = [inputs[1], inputs[2], *([zeros] if zeros is not None else [])]
    k, n, bits, group = (int(attr[key]) for key in ("K", "N", "bits", "group"))
    return inputs[0], weights, k, n, bits, group, zeros is None


class PackedMatMul(OnnxOpConverter):
    """``compiler.tvm::PackedMatMul(A, tiles, scales[, zeros])`` -> fused TIR kernels."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        a, weights, k, n, bits, group, symmetric = _packed_inputs(inputs, attr)
        dims = list(a.ty.shape) if a.ty.shape is not None else None
        # A symbolic dim (a dynamic sequence length) leaves the row count to run time: dequantize.
        static = dims is not None and all(isinstance(d, tirx.IntImm) for d in dims)
        shape = [int(d) for d in dims] if static else None
        quads = bool(int(attr.get("int8_dot", 0)))
        tiled = quads or len(weights[1].ty.shape) == 3  # scales [T, G, tile], not [G, N]
        tag = f"k{k}_n{n}_b{bits}_g{group}{'' if symmetric else '_asym'}{'_q' if quads else ''}"
        rows = math.prod(shape[:-1]) if shape is not None else None
        if rows is not None and rows <= GEMV_MAX_ROWS:
            if quads:
                func = int8_dot_gemv_func(rows, k, n, bits=bits, group=group, symmetric=symmetric)
            else:
                func = gemv_func(
                    rows, k, n, bits=bits, group=group, symmetric=symmetric, tiled=tiled
                )
            gv = _add(bb, func, f"packed_gemv_m{rows}_{tag}")
            flat = bb.emit(relax.op.reshape(a, (rows, k)))
            out = bb.emit(
                relax.call_tir(gv, [flat, *weights], relax.TensorType((rows, n), "float32"))
            )
            return relax.op.reshape(out, (*shape[:-1], n))
        # (imported here: panel_gemm builds on this module)
        from backends.tvm.panel_gemm import panel_product, worth_panels

        if quads:  # int8 activations, as the GEMV: the same function at every row count
            a = bb.emit_te(round_activations, a, group, primfunc_name_hint="round_activations")
        panels = worth_panels(n)
        func = dequantize_func(
            k,
            n,
            bits=bits,
            group=group,
            symmetric=symmetric,
            quads=quads,
            panels=panels,
            tiled=tiled,
        )
        gv = _add(bb, func, f"packed_dequantize_{tag}{'_panels' if panels else ''}")
        shape = (-(-n // PANEL), k, PANEL) if panels else (k, n)
        w = bb.emit(relax.call_tir(gv, weights, relax.TensorType(shape, "float32")))
        return panel_product(bb, a, w, None, k, n) if panels else relax.op.matmul(a, w)


class PackedGather(OnnxOpConverter):
    """``compiler.tvm::PackedGather(ids, tiles, scales[, zeros])`` -> rows of W, dequantized."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        ids, weights, k, n, bits, group, _ = _packed_inputs(inputs, attr)

        def compute(ids_t, packed_t, scales_t, *rest):
            zeros_t = rest[0] if rest else None
            return gather_rows(ids_t, packed_t, scales_t, zeros_t, k=k, n=n, bits=bits, group=group)

        return bb.emit_te(compute, ids, *weights, primfunc_name_hint="packed_gather")
