"""Float32 matmuls on constant weights through our panel GEMM kernel (CPU).

Before import, :func:`lower_float_matmuls` rewrites each float32 ``MatMul(A, W)`` and ``Gemm(A,
B[, C])`` whose weight is a constant 2-D initializer — directly or through ``Transpose`` — into
``compiler.tvm::PanelMatMul(A, Wp[, bias])``, with ``W`` re-laid out in column panels at build
time (:func:`backends.tvm.panel_kernels.pack_panels`; the artifact stores the panels, not ``W``).
A bias is taken along when it is a constant vector: ``Gemm``'s ``C``, or an ``Add`` of a
constant ``[N]`` right after the product (or after a ``Reshape`` of it that keeps ``N`` last).

A weight is packed only if padding its ``N`` columns to whole panels adds at most ``N / 4``
(``N`` a multiple of 32, or ~96 and up; narrower products would mostly compute padding and go
to the BLAS), and if every use of it can read the panels: products (through a 2-D ``Transpose``
or not, but all the same way) and, for a weight used transposed, row ``Gather`` (axis 0) of the
embedding it transposes — a tied embedding table and LM head — which becomes ``PanelGather``.
Any other use (the weight is also an output, or feeds another op) leaves all its products to
the BLAS (:mod:`backends.tvm.blas_offload`), so no tensor is ever stored twice.

Why a kernel of our own (measured on this machine, 2 Zen 4 cores, 128 × 768 · 768 × 3072): the
kernel reaches ~215 GFLOP/s on 2 threads, numpy's OpenBLAS ~165 and MKL ~130; OpenBLAS packs
``W`` again on every call, where the panels are packed once, at build time. A decode step's
GEMV streams the same panels (one row, 32 columns at a time).

Preconditions: ``A`` float32 with a known rank ≥ 2 (a rank-1 ``A`` is left to TVM); ``Gemm``
without ``transA``, with ``alpha = beta = 1``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from backends.tvm.panel_kernels import PANEL, gather_func, gemm_func, pack_panels
from backends.tvm.quantized import DOMAIN, WeightTable
from compiler.ir_utils import drop_unused

__all__ = ["PanelGather", "PanelMatMul", "lower_float_matmuls", "panel_product", "worth_panels"]


def _float_matrix(value: ir.Value | None) -> np.ndarray | None:
    """The constant float32 2-D array of an initializer ``value`` (not a graph input/output)."""
    if value is None or value.const_value is None or not value.is_initializer():
        return None
    if value.is_graph_input() or value.is_graph_output():
        return None
    if value.const_value.dtype != ir.DataType.FLOAT or len(value.const_value.shape) != 2:
        return None
    return value.const_value.numpy()


def _transposed_source(value: ir.Value) -> ir.Value | None:
    """``E`` if ``value = Transpose(E, perm=[1, 0])`` (and not a graph output), else None."""
    node = value.producer()
    if node is None or node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
        return None
    perm = node.attributes.get_ints("perm", [1, 0])
    if list(perm) != [1, 0] or value.is_graph_output():
        return None
    return node.inputs[0]


def _float_rank(value: ir.Value) -> int | None:
    if value.dtype != ir.DataType.FLOAT or value.shape is None:
        return None
    return len(value.shape)


def _product(node: ir.Node) -> tuple[ir.Value, bool] | None:
    """``(weight source, transposed)`` if ``node`` is a product our kernel takes, else None.

    ``transposed``: the product reads ``sourceᵀ`` (``Transpose`` in between, or ``transB``).
    """
    if node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    a, w = node.inputs[0], node.inputs[1]
    if a is None or w is None:
        return None
    rank = _float_rank(a)
    if node.op_type == "MatMul":
        if rank is None or rank < 2:
            return None
        source = _transposed_source(w)
        if source is not None:
            return (source, True) if _float_matrix(source) is not None else None
        return (w, False) if _float_matrix(w) is not None else None
    if node.op_type == "Gemm":
        attrs = node.attributes
        if rank != 2 or attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0:
            return None
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is not None and (attrs.get_float("beta", 1.0) != 1.0 or _bias(c, None) is None):
            return None
        if _float_matrix(w) is None:
            return None
        return w, bool(attrs.get_int("transB", 0))
    return None


def _bias(value: ir.Value, n: int | None) -> np.ndarray | None:
    """A constant float32 bias along rows (``[N]``, ``[1, N]`` or a scalar), as ``[N]``."""
    if value.const_value is None or value.const_value.dtype != ir.DataType.FLOAT:
        return None
    array = value.const_value.numpy()
    if array.ndim > 2 or (array.ndim == 2 and array.shape[0] != 1):
        return None
    if n is None:
        return array
    flat = array.reshape(-1)
    if flat.size == 1:
        return np.full(n, flat[0], np.float32)
    return flat if flat.size == n else None


def _is_row_gather(node: ir.Node, source: ir.Value) -> bool:
    return (
        node.op_type == "Gather"
        and node.domain in ("", "ai.onnx")
        and node.inputs[0] is source
        and node.attributes.get_int("axis", 0) == 0
    )


def _packable(source: ir.Value, products: dict[ir.Node, bool]) -> bool | None:
    """The common orientation of all ``source``'s products if every use can read its panels."""
    orientations = set()
    gathers = False
    for use in source.uses():
        node = use.node
        if node in products:
            orientations.add(products[node])
        elif node.op_type == "Transpose" and _transposed_source(node.outputs[0]) is source:
            users = [u.node for u in node.outputs[0].uses()]
            if not users or any(products.get(user) is not True for user in users):
                return None
            orientations.add(True)
        elif _is_row_gather(node, source):
            gathers = True
        else:
            return None
    if len(orientations) != 1 or (gathers and orientations != {True}):
        return None
    return orientations.pop()


def _only_use(value: ir.Value) -> ir.Usage | None:
    uses = list(value.uses())
    return uses[0] if len(uses) == 1 and not value.is_graph_output() else None


def _following_bias(node: ir.Node, n: int) -> tuple[list[ir.Node], np.ndarray] | None:
    """``([Reshape,] Add, bias)`` when the product's only use is ``Add(out, constant [N])``,
    possibly through a ``Reshape`` that keeps the last axis (``N``) where it is."""
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        return None
    use = _only_use(node.outputs[0])
    between = []
    if use is not None and use.node.op_type == "Reshape" and use.node.domain in ("", "ai.onnx"):
        reshaped = use.node.outputs[0]
        shape = use.node.inputs[1]
        # the shape must exist before the product (the Reshape moves up to it): a constant
        if use.idx != 0 or shape is None or shape.const_value is None:
            return None
        if reshaped.shape is None or reshaped.shape[-1] != n:
            return None
        between = [use.node]
        use = _only_use(reshaped)
    if use is None or use.node.op_type != "Add" or use.node.domain not in ("", "ai.onnx"):
        return None
    other = use.node.inputs[1 - use.idx]
    bias = _bias(other, n) if other is not None else None
    if bias is None or other.const_value.numpy().size == 1:  # a scalar would broadcast over rows
        return None
    return [*between, use.node], bias


def lower_float_matmuls(model: ir.Model) -> bool:
    """Rewrites the products of ``model`` in place (see the module doc); True if any changed."""
    graph = model.graph
    products: dict[ir.Node, bool] = {}
    sources: dict[ir.Value, list[ir.Node]] = {}
    for node in graph:
        found = _product(node)
        if found is not None:
            products[node] = found[1]
            sources.setdefault(found[0], []).append(node)
    weights = WeightTable(graph)
    changed = False
    for source, nodes in sources.items():
        transposed = _packable(source, products)
        if transposed is None:
            continue
        array = source.const_value.numpy()
        w = np.ascontiguousarray(array.T) if transposed else array
        k, n = w.shape
        if not worth_panels(n):  # narrow: much of each panel would be padding
            continue
        panels = weights.add(f"{source.name}_panels", pack_panels(w))
        for node in nodes:
            _replace_product(graph, node, panels, weights, k, n)
        for use in list(source.uses()):
            user = use.node
            if _is_row_gather(user, source):
                gather = ir.node(
                    "PanelGather",
                    [panels, user.inputs[1]],
                    attributes={"rows": n},
                    domain=DOMAIN,
                    name=user.name,
                )
                ir.convenience.replace_nodes_and_values(
                    graph, user, [user], [gather], user.outputs, gather.outputs
                )
        # the Transposes left without users, then the weight itself
        drop_unused(graph, [use.node.outputs[0] for use in source.uses()])
        drop_unused(graph, [source])
        changed = True
    if changed:
        model.opset_imports.setdefault(DOMAIN, 1)
    return changed


def _replace_product(
    graph: ir.Graph, node: ir.Node, panels: ir.Value, weights: WeightTable, k: int, n: int
) -> None:
    inputs = [node.inputs[0], panels]
    old, tail = [node], []
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        inputs.append(weights.add(f"{node.name}_bias", _bias(node.inputs[2], n)))
    elif (fused := _following_bias(node, n)) is not None:
        followers, bias = fused
        inputs.append(weights.add(f"{node.name}_bias", bias))
        old += followers
        tail = followers[:-1]  # a Reshape in between stays, now after the biased product
    new = ir.node("PanelMatMul", inputs, attributes={"K": k, "N": n}, domain=DOMAIN, name=node.name)
    nodes = [new]
    for reshape in tail:
        nodes.append(
            ir.node(
                "Reshape",
                [nodes[-1].outputs[0], *reshape.inputs[1:]],
                attributes=reshape.attributes,
                name=reshape.name,
            )
        )
    dropped = [value for n_ in old for value in n_.inputs[1:]]
    ir.convenience.replace_nodes_and_values(
        graph, node, old, nodes, old[-1].outputs, nodes[-1].outputs
    )
    drop_unused(graph, [v for v in dropped if v is not None and v is not panels])


def worth_panels(n: int) -> bool:
    """Whether padding ``n`` columns to whole panels adds at most ``n / 4`` (see the module doc)."""
    return -(-n // PANEL) * PANEL - n <= n // 4


def panel_product(bb, a: relax.Expr, panels: relax.Expr, bias: relax.Expr | None, k: int, n: int):
    """Relax: ``a · W (+ bias)`` for ``a`` ``[..., k]`` (leading dims may be symbolic) and ``W``
    given as panels ``[⌈n/32⌉, k, 32]``, through the panel GEMM kernel."""
    if bias is None:
        bias = relax.const(np.zeros(n, np.float32))
    dims = list(a.ty.shape)
    rows = dims[0]
    for d in dims[1:-1]:
        rows = rows * d
    # [d0, d1, n] written in place (an output reshaped after would be a copy); other ranks
    # reshape the [rows, n] result
    out_rank = 3 if len(dims) == 3 else 2
    name = f"panel_gemm_k{k}_n{n}" + ("_3d" if out_rank == 3 else "")
    gv = bb.add_func(gemm_func(k, n, out_rank).with_attr("global_symbol", name), name)
    flat = a if len(dims) == 2 else bb.emit(relax.op.reshape(a, (rows, k)))
    shape = (*dims[:-1], n) if out_rank == 3 else (rows, n)
    out = bb.emit(relax.call_tir(gv, [flat, panels, bias], relax.TensorType(shape, "float32")))
    return out if len(dims) in (2, 3) else relax.op.reshape(out, (*dims[:-1], n))


class PanelMatMul(OnnxOpConverter):
    """``compiler.tvm::PanelMatMul(A, panels[, bias])`` -> the panel GEMM kernel."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        bias = inputs[2] if len(inputs) > 2 else None
        return panel_product(bb, inputs[0], inputs[1], bias, int(attr["K"]), int(attr["N"]))


class PanelGather(OnnxOpConverter):
    """``compiler.tvm::PanelGather(panels, ids)`` -> rows of the embedding the panels transpose."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        rows = int(attr["rows"])
        return bb.emit_te(
            lambda panels, ids: gather_func(ids, panels, rows=rows),
            inputs[0],
            inputs[1],
            primfunc_name_hint="panel_gather",
        )
