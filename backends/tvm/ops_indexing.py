"""Gather/scatter-like ONNX ops TVM's Relax importer lacks or gets wrong: ReverseSequence,
TensorScatter, TfIdfVectorizer, Split with empty parts, and ``Gather`` of a constant position
(a slice, so it fuses).

* ``ReverseSequence`` and ``TensorScatter`` are tensor-expression kernels (``bb.emit_te``): each
  output element reads the one input element it comes from.
* ``TfIdfVectorizer`` (integer tokens) counts pool n-grams with comparisons: for each n-gram
  length n and skip distance d the ``[batch, positions, n]`` windows are compared with the
  pool's n-grams, matches are summed over positions, and a constant 0/1 matrix scatters the
  counts to ``ngram_indexes``.

Preconditions: static shapes; attributes and pools are constants by nature.
"""

from __future__ import annotations

import itertools

import numpy as np
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from backends.tvm.ops_common import (
    constant,
    fail,
    input_at,
    is_constant,
    rank_of,
    static_shape,
    string_attr,
)

__all__ = ["CONVERTERS"]


class ReverseSequence(OnnxOpConverter):
    """``ReverseSequence``: along ``time_axis``, the first ``sequence_lens[b]`` elements of each
    batch entry ``b`` (``batch_axis``) reversed, the rest copied."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x, lengths = inputs
        time_axis, batch_axis = attr.get("time_axis", 0), attr.get("batch_axis", 1)
        shape = static_shape(x, "ReverseSequence", attr)

        def compute(data, lens):
            def value(*index):
                length = tirx.Cast("int64", lens[index[batch_axis]])
                t = tirx.Cast("int64", index[time_axis])
                source = list(index)
                source[time_axis] = tirx.if_then_else(t < length, length - 1 - t, t)
                return data[tuple(source)]

            return te.compute(shape, value, "reverse_sequence")

        return bb.emit_te(compute, x, lengths)


class TensorScatter(OnnxOpConverter):
    """``TensorScatter`` (opset 24): ``update`` written into ``past_cache`` along ``axis`` at
    ``write_indices[batch]`` (default 0); ``mode="circular"`` wraps modulo the cache length.

    Each output element at sequence position ``s`` reads ``update[..., k, ...]`` with ``k = s −
    w`` (circular: ``(s − w) mod max_len``) when ``0 ≤ k < update_len``, else ``past_cache``.
    """

    @classmethod
    def _impl_v24(cls, bb, inputs, attr, params):
        past, update, write = inputs[0], inputs[1], input_at(inputs, 2)
        shape = static_shape(past, "TensorScatter", attr)
        axis = attr.get("axis", -2)
        axis = axis + len(shape) if axis < 0 else axis
        if axis == 0:
            raise fail("TensorScatter", attr, "axis must not be the batch axis 0")
        update_len = static_shape(update, "TensorScatter", attr)[axis]
        circular = string_attr(attr, "mode", "linear") == "circular"
        max_len = shape[axis]

        def compute(cache, new, *indices):
            def value(*index):
                s = tirx.Cast("int64", index[axis])
                start = tirx.Cast("int64", indices[0][index[0]]) if indices else 0
                k = tirx.floormod(s - start, max_len) if circular else s - start
                source = list(index)
                source[axis] = tirx.max(tirx.min(k, update_len - 1), 0)
                written = tirx.all(k >= 0, k < update_len)
                return tirx.if_then_else(written, new[tuple(source)], cache[index])

            return te.compute(shape, value, "tensor_scatter")

        arguments = [past, update] + ([write] if write is not None else [])
        return bb.emit_te(compute, *arguments)


class TfIdfVectorizer(OnnxOpConverter):
    """``TfIdfVectorizer`` over integer tokens (``pool_int64s``); string pools are refused.

    Counting follows onnxruntime: n-grams of lengths ``min_gram_length``..``max_gram_length``
    whose items are ``d`` apart for every skip distance ``d = 1..max_skip_count + 1``,
    unigrams counted once (``d = 1``). ``TF``: counts; ``IDF``: ``weights`` (or 1) where a
    count is positive; ``TFIDF``: counts × ``weights`` (or 1). Output ``[batch, size]``
    (``[size]`` for a 1-D input), float32, ``size = max(ngram_indexes) + 1``.
    """

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        if "pool_int64s" not in attr:
            raise fail("TfIdfVectorizer", attr, "string pools are not supported")
        x = inputs[0]
        shape = static_shape(x, "TfIdfVectorizer", attr)
        if len(shape) not in (1, 2):
            raise fail("TfIdfVectorizer", attr, f"input must be 1-D or 2-D, got {shape}")
        batch, length = (1, shape[0]) if len(shape) == 1 else shape
        tokens = relax.op.astype(relax.op.reshape(x, [batch, length]), "int64")
        tokens = bb.normalize(tokens)
        pool = np.asarray(attr["pool_int64s"], dtype=np.int64)
        starts = [*attr["ngram_counts"], len(pool)]
        indexes = list(attr["ngram_indexes"])
        size = max(indexes) + 1
        low, high = attr["min_gram_length"], attr["max_gram_length"]
        skips = attr["max_skip_count"] + 1

        counts, rows = [], []  # counts [batch, P_n] per length; the pool n-grams' row ids
        ngram_id = 0
        for n, (begin, end) in enumerate(itertools.pairwise(starts), start=1):
            grams = pool[begin:end].reshape(-1, n)
            if low <= n <= high and len(grams):
                count = cls._count(bb, tokens, grams, n, skips)
                if count is not None:
                    counts.append(count)
                    rows.extend(range(ngram_id, ngram_id + len(grams)))
            ngram_id += len(grams)
        if not counts:
            y = relax.op.zeros([batch, size], "float32")
        else:
            scatter = np.zeros((len(rows), size), dtype=np.float32)
            scatter[np.arange(len(rows)), [indexes[r] for r in rows]] = 1.0
            counted = counts[0] if len(counts) == 1 else relax.op.concat(counts, axis=1)
            y = bb.normalize(relax.op.matmul(counted, relax.const(scatter)))
        y = cls._weigh(y, string_attr(attr, "mode", "TF"), attr.get("weights"), attr)
        return relax.op.reshape(y, [size]) if len(shape) == 1 else y

    @staticmethod
    def _count(bb, tokens, grams: np.ndarray, n: int, skips: int):
        """How often each of ``grams`` ([P, n]) occurs in ``tokens`` ([batch, length]), float32
        [batch, P]; None when no window fits."""
        length = int(tokens.ty.shape[1])
        total = None
        for distance in range(1, (1 if n == 1 else skips) + 1):
            positions = length - (n - 1) * distance
            if positions <= 0:
                continue
            items = [
                relax.op.strided_slice(tokens, [1], [j * distance], [j * distance + positions])
                for j in range(n)
            ]
            windows = relax.op.stack(items, axis=2)  # [batch, positions, n]
            equal = relax.op.equal(
                relax.op.expand_dims(windows, 2), relax.const(grams.astype(np.int64))
            )  # [batch, positions, P, n]
            matched = relax.op.equal(
                relax.op.sum(relax.op.astype(equal, "int32"), axis=[3]),
                relax.const(n, "int32"),
            )
            found = relax.op.sum(relax.op.astype(matched, "float32"), axis=[1])
            total = found if total is None else relax.op.add(total, found)
        return None if total is None else bb.normalize(total)

    @staticmethod
    def _weigh(counts, mode: str, weights, attr):
        weights = None if weights is None else relax.const(np.asarray(weights, np.float32))
        if mode == "TF":
            return counts
        if mode == "IDF":
            present = relax.op.astype(relax.op.greater(counts, relax.const(0.0)), "float32")
            return present if weights is None else relax.op.multiply(present, weights)
        if mode == "TFIDF":
            return counts if weights is None else relax.op.multiply(counts, weights)
        raise fail("TfIdfVectorizer", attr, f"unknown mode {mode!r}")


class Split(onnx_frontend.Split):
    """``Split`` with zero-size parts: one ``strided_slice`` per output.

    TVM's ``split`` takes increasing split points and refuses repeated ones ("split_indices must
    be sorted"), which parts of size 0 make. (An empty part must not be a constant: TVM cannot
    load a zero-size constant from a library, "Invalid DLTensor file format".)
    """

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        sizes = input_at(inputs, 1)
        if sizes is None or not is_constant(sizes):
            return super()._impl_v13(bb, inputs, attr, params)
        sizes = [int(s) for s in constant(sizes, params, "Split", attr, "split").reshape(-1)]
        if all(sizes):
            return super()._impl_v13(bb, inputs, attr, params)
        x = inputs[0]
        axis = attr.get("axis", 0)
        axis = axis + rank_of(x) if axis < 0 else axis
        parts, start = [], 0
        for size in sizes:
            parts.append(relax.op.strided_slice(x, [axis], [start], [start + size]))
            start += size
        return relax.Tuple([bb.normalize(p) for p in parts])


class Gather(onnx_frontend.Gather):
    """``Gather`` of one constant position (a 0-d index) along an axis of static extent: a
    ``strided_slice`` of width 1, squeezed.

    TVM's ``take`` is a kernel of its own that fusion does not merge with its consumer; a slice
    is injective, so the copy it feeds (a KV-cache layer's ``Concat`` in a decode step: 24 takes
    and 24 concatenations of 400 KB per GPT-2 step) becomes one kernel that reads each element
    once.
    """

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        data, indices = inputs[0], inputs[1]
        shape = getattr(getattr(data, "ty", None), "shape", None)
        if not (
            isinstance(data.ty, relax.TensorType)
            and shape is not None
            and is_constant(indices)
            and indices.value.numpy().ndim == 0
            and not is_constant(data)  # constants fold in TVM's own converter
        ):
            return super()._impl_v13(bb, inputs, attr, params)
        axis = attr.get("axis", 0)
        axis = axis + rank_of(data) if axis < 0 else axis
        extent = shape[axis]
        if not isinstance(extent, (int, tirx.IntImm)):
            return super()._impl_v13(bb, inputs, attr, params)
        extent, given = int(extent), int(indices.value.numpy())
        index = given + extent if given < 0 else given
        if not 0 <= index < extent:
            raise fail("Gather", attr, f"index {given} is outside an axis of {extent}")
        sliced = bb.normalize(relax.op.strided_slice(data, [axis], [index], [index + 1]))
        return relax.op.squeeze(sliced, [axis])


CONVERTERS: dict[str, type[OnnxOpConverter]] = {
    "ReverseSequence": ReverseSequence,
    "TensorScatter": TensorScatter,
    "TfIdfVectorizer": TfIdfVectorizer,
    "Split": Split,
    "Gather": Gather,
}
