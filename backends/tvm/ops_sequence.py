"""Relax converters for recurrent and sequence ops TVM 0.27's ONNX importer lacks.

All unroll over a static sequence length (our artifacts, and the ONNX node tests, have static
shapes): one set of small matmuls per step, which TVM fuses; no loop reaches the VM.

* ``RNN``/``GRU``/``LSTM`` (opset 7/14/22): ``X`` (seq, batch, input), or (batch, seq, input)
  with ``layout=1``; the input projection ``X·Wᵀ + Wb (+ Rb)`` is one matmul for all steps; each
  step adds ``H·Rᵀ`` and applies the gates (ONNX's equations, gate orders ``iofc``/``zrh``),
  ``clip`` on the gate pre-activations, ``activations`` with their ``activation_alpha``/``beta``
  (consumed in order by the functions that take them, as onnxruntime does), ``direction``
  forward/reverse/bidirectional, ``initial_h``/``initial_c``, peepholes ``P`` (``iof``),
  ``input_forget`` (``f = 1 - i``), ``linear_before_reset``. ``sequence_lens`` masks the steps
  past each batch entry's length: the state is held and ``Y`` is 0 there (a reverse pass starts
  at the entry's last step). Outputs ``Y`` (seq, dirs, batch, hidden), ``Y_h``/``Y_c`` (dirs,
  batch, hidden), batch first with ``layout=1``.
* ``LinearAttention`` (opset 27), as ``onnx.reference.ops.op_linear_attention``: per step, in
  float32, ``S ← exp(g_t)·S`` (gated), ``v_t ← β_t·(v_t − Sᵀk_t)`` (delta), ``S ← S + k_t⊗v_t``,
  ``o_t = scale·q_tᵀS`` with each KV head's state shared by ``q_num_heads/kv_num_heads`` query
  heads; ``decay`` per head or per key dim, ``beta`` per head or shared; ``scale`` 0 means
  ``1/sqrt(d_k)``; ``present_state`` in ``past_state``'s dtype (else the query's).
* ``CausalConvWithState`` (opset 27), as ``onnx.reference.ops.op_causal_conv_with_state``:
  ``padded = concat(past_state or 0, x)`` on the time axis, a depthwise valid conv1d (+ bias),
  rounded to the input dtype, then SiLU (``silu``/``swish``) computed in float32;
  ``present_state`` is the last ``k - 1`` steps of ``padded``.

:data:`CONVERTERS` also carries ``Resize`` (:mod:`backends.tvm.ops_resize`). Control flow
(``If``/``Loop``/``Scan``) is unrolled before import instead, see
:mod:`backends.tvm.control_flow`.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

from backends.tvm.ops_resize import CONVERTERS as RESIZE_CONVERTERS

__all__ = ["CONVERTERS"]


def _input(inputs, index: int):
    return inputs[index] if len(inputs) > index else None


def _shape(bb, expr) -> list[int]:
    """The static shape of ``expr`` (normalized first, so its type is known)."""
    shape = bb.normalize(expr).ty.shape
    if shape is None or not all(isinstance(d, (int, tirx.IntImm)) for d in shape):
        raise ValueError(f"needs a static shape, got {shape}")
    return [int(d) for d in shape]


def _dtype(bb, expr) -> str:
    return str(bb.normalize(expr).ty.dtype)


def _text(value, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def _const(value: float, dtype: str):
    if dtype in ("float32", "float64", "float16"):
        return relax.const(value, dtype)
    return relax.op.astype(relax.const(value, "float32"), dtype)


def _cast(bb, expr, dtype: str):
    expr = bb.normalize(expr)
    return expr if _dtype(bb, expr) == dtype else relax.op.astype(expr, dtype)


def _slice(expr, axis: int, begin: int, end: int):
    return relax.op.strided_slice(expr, axes=[axis], begin=[begin], end=[end])


# ---------------------------------------------------------------------------------------------
# RNN, GRU, LSTM

# Activation functions of the recurrent ops: name -> (uses alpha, uses beta, default alpha, beta).
_ACTIVATIONS = {
    "relu": (False, False, None, None),
    "tanh": (False, False, None, None),
    "sigmoid": (False, False, None, None),
    "affine": (True, True, 1.0, 0.0),
    "leakyrelu": (True, False, 0.01, None),
    "thresholdedrelu": (True, False, 1.0, None),
    "scaledtanh": (True, True, 1.0, 1.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, None),
    "softsign": (False, False, None, None),
    "softplus": (False, False, None, None),
}


def _activation(name: str, alpha: float | None, beta: float | None, dtype: str):
    """The function ``x -> f(x)`` (``x`` of ``dtype``) of an ONNX recurrent activation name."""
    op = relax.op

    def c(x, value):
        return _const(value, dtype)

    functions = {
        "relu": lambda x: op.nn.relu(x),
        "tanh": lambda x: op.tanh(x),
        "sigmoid": lambda x: op.sigmoid(x),
        "affine": lambda x: op.add(op.multiply(x, c(x, alpha)), c(x, beta)),
        "leakyrelu": lambda x: op.nn.leakyrelu(x, alpha),
        "thresholdedrelu": lambda x: op.where(op.greater(x, c(x, alpha)), x, c(x, 0.0)),
        "scaledtanh": lambda x: op.multiply(op.tanh(op.multiply(x, c(x, beta))), c(x, alpha)),
        "hardsigmoid": lambda x: op.clip(op.add(op.multiply(x, c(x, alpha)), c(x, beta)), 0, 1),
        "elu": lambda x: op.where(
            op.greater(x, c(x, 0.0)),
            x,
            op.multiply(op.subtract(op.exp(x), c(x, 1.0)), c(x, alpha)),
        ),
        "softsign": lambda x: op.divide(x, op.add(op.abs(x), c(x, 1.0))),
        "softplus": lambda x: op.log(op.add(op.exp(x), c(x, 1.0))),
    }
    return functions[name]


class _Recurrent(OnnxOpConverter):
    """What RNN, GRU and LSTM share: inputs, directions, masking, output layout."""

    NAME = ""
    GATES = 1  # gate blocks in W, R and each half of B
    DEFAULT_ACTIVATIONS: tuple[str, ...] = ()

    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        x, w, r = inputs[0], inputs[1], inputs[2]
        bias, lengths, initial_h = (_input(inputs, i) for i in (3, 4, 5))
        initial_c, peepholes = _input(inputs, 6), _input(inputs, 7)
        hidden = int(attr["hidden_size"]) if "hidden_size" in attr else _shape(bb, r)[-1]
        layout = attr.get("layout", 0)
        direction = _text(attr.get("direction"), "forward")
        directions = ["forward", "reverse"] if direction == "bidirectional" else [direction]
        if direction not in ("forward", "reverse", "bidirectional"):
            raise ValueError(f"{cls.NAME}: unknown direction {direction!r}")
        if layout:
            x = relax.op.permute_dims(x, [1, 0, 2])
            if initial_h is not None:
                initial_h = relax.op.permute_dims(initial_h, [1, 0, 2])
            if initial_c is not None:
                initial_c = relax.op.permute_dims(initial_c, [1, 0, 2])
        seq, batch, _ = _shape(bb, x)
        dtype = _dtype(bb, x)
        functions = cls._functions(attr, len(directions), dtype)
        clip = attr.get("clip")
        masks = cls._masks(bb, lengths, seq, batch)
        ys, finals_h, finals_c = [], [], []
        for d, name in enumerate(directions):
            take = lambda t, d=d: bb.normalize(  # noqa: E731 - the d-th direction of a tensor
                relax.op.take(t, relax.const(d, "int64"), axis=0)
            )
            w_d, r_d = take(w), take(r)
            b_d = None if bias is None else take(bias)
            p_d = None if peepholes is None else take(peepholes)
            h = take(initial_h) if initial_h is not None else relax.op.zeros((batch, hidden), dtype)
            c = None
            if cls.GATES == 4:
                c = (
                    take(initial_c)
                    if initial_c is not None
                    else relax.op.zeros((batch, hidden), dtype)
                )
            # X·Wᵀ for all steps at once: (seq, batch, gates·hidden).
            projected = bb.normalize(relax.op.matmul(x, relax.op.permute_dims(w_d, [1, 0])))
            steps = range(seq - 1, -1, -1) if name == "reverse" else range(seq)
            outputs: dict[int, relax.Expr] = {}
            state = cls._State(h=bb.normalize(h), c=None if c is None else bb.normalize(c))
            for t in steps:
                x_t = relax.op.take(projected, relax.const(t, "int64"), axis=0)
                new = cls._step(bb, x_t, state, r_d, b_d, p_d, hidden, functions[d], clip, attr)
                if masks is not None:
                    valid = masks[t]
                    zero = _const(0.0, dtype)
                    outputs[t] = bb.normalize(relax.op.where(valid, new.h, zero))
                    new = cls._State(
                        h=bb.normalize(relax.op.where(valid, new.h, state.h)),
                        c=None
                        if new.c is None
                        else bb.normalize(relax.op.where(valid, new.c, state.c)),
                    )
                else:
                    outputs[t] = new.h
                state = new
            # Y for this direction: (seq, 1, batch, hidden), in time order.
            ys.append(relax.op.stack([outputs[t] for t in range(seq)], axis=0))
            finals_h.append(state.h)
            finals_c.append(state.c)
        y = bb.normalize(relax.op.stack(ys, axis=1))  # (seq, dirs, batch, hidden)
        y_h = bb.normalize(relax.op.stack(finals_h, axis=0))  # (dirs, batch, hidden)
        results = [y, y_h]
        if cls.GATES == 4:
            results.append(bb.normalize(relax.op.stack(finals_c, axis=0)))
        if layout:
            results = [relax.op.permute_dims(results[0], [2, 0, 1, 3])] + [
                relax.op.permute_dims(v, [1, 0, 2]) for v in results[1:]
            ]
        return relax.Tuple(results)

    @classmethod
    def _impl_v14(cls, bb, inputs, attr, params):
        return cls._impl_v7(bb, inputs, attr, params)

    class _State:
        def __init__(self, h, c=None):
            self.h, self.c = h, c

    @classmethod
    def _functions(cls, attr, num_directions: int, dtype: str):
        """Each direction's activation functions, alphas/betas consumed in order."""
        names = [_text(n, "").lower() for n in attr.get("activations", ())]
        if not names:
            names = [n.lower() for n in cls.DEFAULT_ACTIVATIONS] * num_directions
        per_direction = len(cls.DEFAULT_ACTIVATIONS)
        if len(names) != per_direction * num_directions:
            raise ValueError(
                f"{cls.NAME}: {len(names)} activations, expected {per_direction} per direction"
            )
        alphas = list(attr.get("activation_alpha", ()))
        betas = list(attr.get("activation_beta", ()))
        functions = []
        for name in names:
            if name not in _ACTIVATIONS:
                raise ValueError(f"{cls.NAME}: unsupported activation {name!r}")
            uses_alpha, uses_beta, alpha, beta = _ACTIVATIONS[name]
            if uses_alpha and alphas:
                alpha = float(alphas.pop(0))
            if uses_beta and betas:
                beta = float(betas.pop(0))
            functions.append(_activation(name, alpha, beta, dtype))
        return [
            functions[d * per_direction : (d + 1) * per_direction] for d in range(num_directions)
        ]

    @staticmethod
    def _masks(bb, lengths, seq: int, batch: int):
        """Per step, a (batch, 1) bool ``t < sequence_lens``; None when every step is valid."""
        if lengths is None:
            return None
        if isinstance(lengths, tvm.ir.GenericConst):
            values = np.asarray(lengths.value.numpy()).reshape(-1)
            if np.all(values == seq):
                return None
        lengths = bb.normalize(relax.op.reshape(relax.op.astype(lengths, "int64"), (batch, 1)))
        return [bb.normalize(relax.op.less(relax.const(t, "int64"), lengths)) for t in range(seq)]

    @staticmethod
    def _gate(pre, clip):
        if clip is not None:
            return relax.op.clip(pre, -float(clip), float(clip))
        return pre

    @staticmethod
    def _biases(b_d, gates: int, hidden: int):
        """``(Wb, Rb)`` of one direction, each (gates·hidden,)."""
        if b_d is None:
            return None, None
        size = gates * hidden
        return _slice(b_d, 0, 0, size), _slice(b_d, 0, size, 2 * size)


class RNN(_Recurrent):
    """ONNX ``RNN``: ``H_t = f(X_t·Wᵀ + H_{t-1}·Rᵀ + Wb + Rb)`` (f = Tanh by default)."""

    NAME = "RNN"
    GATES = 1
    DEFAULT_ACTIVATIONS = ("Tanh",)

    @classmethod
    def _step(cls, bb, x_t, state, r_d, b_d, p_d, hidden, functions, clip, attr):
        (f,) = functions
        pre = relax.op.add(x_t, relax.op.matmul(state.h, relax.op.permute_dims(r_d, [1, 0])))
        wb, rb = cls._biases(b_d, 1, hidden)
        if wb is not None:
            pre = relax.op.add(pre, relax.op.add(wb, rb))
        return cls._State(h=bb.normalize(f(cls._gate(pre, clip))))


class GRU(_Recurrent):
    """ONNX ``GRU`` (gates ``zrh``; f = Sigmoid, g = Tanh by default)::

    z = f(X·Wzᵀ + H·Rzᵀ + Wbz + Rbz);  r = f(X·Wrᵀ + H·Rrᵀ + Wbr + Rbr)
    h = g(X·Whᵀ + (r ⊙ H)·Rhᵀ + Rbh + Wbh)          linear_before_reset = 0
    h = g(X·Whᵀ + r ⊙ (H·Rhᵀ + Rbh) + Wbh)          linear_before_reset ≠ 0
    H' = (1 - z) ⊙ h + z ⊙ H
    """

    NAME = "GRU"
    GATES = 3
    DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh")

    @classmethod
    def _step(cls, bb, x_t, state, r_d, b_d, p_d, hidden, functions, clip, attr):
        f, g = functions
        op = relax.op
        h = state.h
        wb, rb = cls._biases(b_d, 3, hidden)
        r_zr = op.permute_dims(_slice(r_d, 0, 0, 2 * hidden), [1, 0])
        r_h = op.permute_dims(_slice(r_d, 0, 2 * hidden, 3 * hidden), [1, 0])
        x_zr, x_h = _slice(x_t, 1, 0, 2 * hidden), _slice(x_t, 1, 2 * hidden, 3 * hidden)
        pre_zr = op.add(x_zr, op.matmul(h, r_zr))
        if wb is not None:
            pre_zr = op.add(
                pre_zr, op.add(_slice(wb, 0, 0, 2 * hidden), _slice(rb, 0, 0, 2 * hidden))
            )
        zr = bb.normalize(f(cls._gate(pre_zr, clip)))
        z, r = _slice(zr, 1, 0, hidden), _slice(zr, 1, hidden, 2 * hidden)
        wbh = None if wb is None else _slice(wb, 0, 2 * hidden, 3 * hidden)
        rbh = None if rb is None else _slice(rb, 0, 2 * hidden, 3 * hidden)
        if attr.get("linear_before_reset", 0):
            recurrent = op.matmul(h, r_h)
            if rbh is not None:
                recurrent = op.add(recurrent, rbh)
            pre_h = op.add(x_h, op.multiply(r, recurrent))
        else:
            pre_h = op.add(x_h, op.matmul(op.multiply(r, h), r_h))
            if rbh is not None:
                pre_h = op.add(pre_h, rbh)
        if wbh is not None:
            pre_h = op.add(pre_h, wbh)
        candidate = g(cls._gate(pre_h, clip))
        one = _const(1.0, _dtype(bb, x_t))
        new_h = op.add(op.multiply(op.subtract(one, z), candidate), op.multiply(z, h))
        return cls._State(h=bb.normalize(new_h))


class LSTM(_Recurrent):
    """ONNX ``LSTM`` (gates ``iofc``, peepholes ``iof``; f = Sigmoid, g = h = Tanh)::

    i = f(X·Wiᵀ + H·Riᵀ + Pi ⊙ C + Wbi + Rbi);  f_ = f(… + Pf ⊙ C + …)  (1 - i: input_forget)
    c = g(X·Wcᵀ + H·Rcᵀ + Wbc + Rbc);  C' = f_ ⊙ C + i ⊙ c
    o = f(X·Woᵀ + H·Roᵀ + Po ⊙ C' + Wbo + Rbo);  H' = o ⊙ h(C')
    """

    NAME = "LSTM"
    GATES = 4
    DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")

    @classmethod
    def _step(cls, bb, x_t, state, r_d, b_d, p_d, hidden, functions, clip, attr):
        f, g, h_fn = functions
        op = relax.op
        pre = op.add(x_t, op.matmul(state.h, op.permute_dims(r_d, [1, 0])))
        wb, rb = cls._biases(b_d, 4, hidden)
        if wb is not None:
            pre = op.add(pre, op.add(wb, rb))
        pre = bb.normalize(pre)

        def block(k):
            return _slice(pre, 1, k * hidden, (k + 1) * hidden)

        def peephole(k, c):
            return (
                None
                if p_d is None
                else op.multiply(_slice(p_d, 0, k * hidden, (k + 1) * hidden), c)
            )

        pre_i, pre_o, pre_f, pre_c = block(0), block(1), block(2), block(3)
        if p_d is not None:
            pre_i = op.add(pre_i, peephole(0, state.c))
            pre_f = op.add(pre_f, peephole(2, state.c))
        i = bb.normalize(f(cls._gate(pre_i, clip)))
        one = _const(1.0, _dtype(bb, x_t))
        coupled = attr.get("input_forget", 0)
        forget = op.subtract(one, i) if coupled else f(cls._gate(pre_f, clip))
        candidate = g(cls._gate(pre_c, clip))
        c = bb.normalize(op.add(op.multiply(forget, state.c), op.multiply(i, candidate)))
        if p_d is not None:
            pre_o = op.add(pre_o, peephole(1, c))
        o = f(cls._gate(pre_o, clip))
        return cls._State(h=bb.normalize(op.multiply(o, h_fn(c))), c=c)


# ---------------------------------------------------------------------------------------------
# LinearAttention, CausalConvWithState


class LinearAttention(OnnxOpConverter):
    """ONNX ``LinearAttention`` (opset 27), unrolled over the sequence; see the module doc."""

    RULES = ("linear", "gated", "delta", "gated_delta")

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        query, key, value = inputs[0], inputs[1], inputs[2]
        past, decay, beta = (_input(inputs, i) for i in (3, 4, 5))
        rule = _text(attr.get("update_rule"), "gated_delta")
        if rule not in cls.RULES:
            raise ValueError(f"LinearAttention: unknown update_rule {rule!r}")
        gating, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
        if gating != (decay is not None) or delta != (beta is not None):
            raise ValueError(
                f"LinearAttention: update_rule {rule!r} "
                f"{'needs' if gating else 'forbids'} decay and "
                f"{'needs' if delta else 'forbids'} beta"
            )
        q_heads, kv_heads = int(attr["q_num_heads"]), int(attr["kv_num_heads"])
        if q_heads % kv_heads:
            raise ValueError("LinearAttention: q_num_heads must be a multiple of kv_num_heads")
        dtype = _dtype(bb, query)
        batch, length, q_hidden = _shape(bb, query)
        d_k, d_v = q_hidden // q_heads, _shape(bb, value)[2] // kv_heads
        group = q_heads // kv_heads

        def heads(x, count):  # (B, T, count·d) -> (B, count, T, d), float32
            b, t, hd = _shape(bb, x)
            x = relax.op.reshape(_cast(bb, x, "float32"), (b, t, count, hd // count))
            return bb.normalize(relax.op.permute_dims(x, [0, 2, 1, 3]))

        q, k, v = heads(query, q_heads), heads(key, kv_heads), heads(value, kv_heads)
        if decay is not None:  # (B, H_kv, T, 1 or d_k)
            last = _shape(bb, decay)[2]
            decay = heads(decay, kv_heads) if last in (kv_heads, kv_heads * d_k) else None
            if decay is None:
                raise ValueError(f"LinearAttention: decay's last dim {last} is not H_kv(·d_k)")
        if beta is not None:  # (B, H_kv or 1, T, 1)
            beta = heads(beta, _shape(bb, beta)[2])
        if past is not None:
            state_dtype = _dtype(bb, past)
            state = bb.normalize(_cast(bb, past, "float32"))
        else:
            state_dtype = dtype
            state = relax.op.zeros((batch, kv_heads, d_k, d_v), "float32")
        scale = attr.get("scale", 0.0) or 1.0 / math.sqrt(d_k)
        scale = relax.const(float(scale), "float32")
        outputs = []
        for t in range(length):
            q_t, k_t, v_t = (_slice(x, 2, t, t + 1) for x in (q, k, v))  # (B, H, 1, d)
            if decay is not None:  # (B, H, 1, d_k or 1) -> (B, H, d_k or 1, 1)
                g_t = relax.op.permute_dims(_slice(decay, 2, t, t + 1), [0, 1, 3, 2])
                state = relax.op.multiply(state, relax.op.exp(g_t))
            if beta is not None:
                retrieved = relax.op.matmul(k_t, state)  # (B, H, 1, d_v)
                v_t = relax.op.multiply(
                    _slice(beta, 2, t, t + 1), relax.op.subtract(v_t, retrieved)
                )
            outer = relax.op.matmul(relax.op.permute_dims(k_t, [0, 1, 3, 2]), v_t)
            state = bb.normalize(relax.op.add(state, outer))
            read = relax.op.repeat(state, group, axis=1) if group > 1 else state
            outputs.append(relax.op.multiply(relax.op.matmul(q_t, read), scale))
        output = relax.op.concat(outputs, axis=2)  # (B, H_q, T, d_v)
        output = relax.op.reshape(
            relax.op.permute_dims(output, [0, 2, 1, 3]), (batch, length, q_heads * d_v)
        )
        return relax.Tuple([bb.normalize(_cast(bb, output, dtype)), _cast(bb, state, state_dtype)])


class CausalConvWithState(OnnxOpConverter):
    """ONNX ``CausalConvWithState`` (opset 27); see the module doc."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, weight = inputs[0], inputs[1]
        bias, past = _input(inputs, 2), _input(inputs, 3)
        activation = _text(attr.get("activation"), "none")
        if activation not in ("none", "silu", "swish"):
            raise ValueError(f"CausalConvWithState: unknown activation {activation!r}")
        batch, channels, length = _shape(bb, x)
        kernel = _shape(bb, weight)[2]
        dtype = _dtype(bb, x)
        if kernel > 1:
            if past is None:
                past = relax.op.zeros((batch, channels, kernel - 1), dtype)
            padded = bb.normalize(relax.op.concat([past, x], axis=2))
        else:
            padded = x
        compute = "float32" if dtype in ("float16", "bfloat16") else dtype
        if kernel > 1:
            conv = relax.op.nn.conv1d(
                _cast(bb, padded, compute),
                _cast(bb, weight, compute),
                groups=channels,
                out_dtype=compute,
            )
        else:  # a per-channel scale (our CPU schedules miscompile a 1-wide conv fused with +b)
            scale = relax.op.reshape(_cast(bb, weight, compute), (1, channels, 1))
            conv = relax.op.multiply(_cast(bb, padded, compute), scale)
        if bias is not None:
            conv = relax.op.add(conv, relax.op.reshape(_cast(bb, bias, compute), (1, channels, 1)))
        output = _cast(bb, conv, dtype)
        if activation in ("silu", "swish"):
            wide = _cast(bb, output, "float32")
            output = _cast(bb, relax.op.multiply(wide, relax.op.sigmoid(wide)), dtype)
        if kernel > 1:
            present = _slice(padded, 2, length, length + kernel - 1)
        else:  # no state: (batch, channels, 0), sliced (a zero-size constant cannot be loaded)
            present = _slice(x, 2, length, length)
        return relax.Tuple([bb.normalize(output), bb.normalize(present)])


SEQUENCE_OPS: dict[str, type[OnnxOpConverter]] = {
    "RNN": RNN,
    "GRU": GRU,
    "LSTM": LSTM,
    "LinearAttention": LinearAttention,
    "CausalConvWithState": CausalConvWithState,
}

# What converters.py merges into TVM's table: the ops above and Resize (ops_resize).
CONVERTERS: dict[str, type[OnnxOpConverter]] = {**RESIZE_CONVERTERS, **SEQUENCE_OPS}
