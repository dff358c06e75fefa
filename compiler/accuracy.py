"""Error budgets for lossy passes: measure each one's output error, roll it back when over.

A pass declares itself lossy with a class attribute ``lossy = True`` (quantize, prune, lowrank,
cast). When the pass manager has an :class:`AccuracyBudget`, it runs the model in onnxruntime on
the budget's inputs before and after every lossy pass and measures the error of the pass's
result against the model as it was before the pass: the normalized max error
(:func:`compiler.numerics.max_error`, worst output), or for causal LMs the relative perplexity
increase on held-out text (``metric="perplexity"``). A pass whose error exceeds ``budget`` is
rolled back: the model before it is restored (a clone taken before the pass — cheap, tensors are
shared), and the record says so. Errors compound, so the budget is checked per pass *and*
against the input model.

Per-layer rollback: a pass that can leave layers out (``without_nodes(names)``, with
``layer_errors(records)`` and ``record_key`` for its per-layer records — ``quantize`` and
``cast`` do) is first re-run from the clone without its worst layers (ranked by measured
sensitivity — the pass applied to one layer alone — or, for many layers, by the error the pass
recorded), a quarter of them more per attempt, up to three attempts
(:class:`compiler.pass_manager.PassManager`); the first attempt within budget is kept and its
record lists the layers left in float.

Precondition for lossy passes: they replace tensors (new initializers) and never write into an
existing tensor's memory, so the clone taken before the pass still holds the original weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from compiler.errors import InputError
from compiler.numerics import max_error

__all__ = [
    "AccuracyBudget",
    "AccuracyRecord",
    "is_lossy",
    "outputs_on",
    "relative_rms",
    "worst_error",
]

Feed = Mapping[str, np.ndarray]


def is_lossy(pass_: ir.passes.PassBase) -> bool:
    """Whether a pass declared itself lossy (class attribute ``lossy = True``)."""
    return bool(getattr(pass_, "lossy", False))


@dataclasses.dataclass
class AccuracyRecord:
    """One lossy pass: its error against the model before it and against the input model."""

    pass_name: str
    error: float
    total_error: float
    budget: float
    rolled_back: bool
    kept_in_float: list[str] = dataclasses.field(default_factory=list)  # per-layer rollback

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def outputs_on(model: ir.Model, feeds: Sequence[Feed]) -> list[dict[str, np.ndarray]]:
    """``model``'s outputs in onnxruntime for each feed (one session)."""
    if not feeds:
        return []  # no session: loading a large model costs seconds
    from backends.onnxruntime.reference import ReferenceSession

    session = ReferenceSession(model)
    return [session.run(feed) for feed in feeds]


def worst_error(actual: list[dict], expected: list[dict]) -> float:
    """The largest normalized max error over all feeds and outputs."""
    return max(
        (max(max_error(a, e).values(), default=0.0) for a, e in zip(actual, expected, strict=True)),
        default=0.0,
    )


def relative_rms(actual: list[dict], expected: list[dict]) -> float:
    """``‖a − e‖ / ‖e‖`` over all feeds and outputs together (an average-case error)."""
    num = den = 0.0
    for a, e in zip(actual, expected, strict=True):
        for name, ref in e.items():
            ref = np.asarray(ref, np.float64)
            num += float(((np.asarray(a[name], np.float64) - ref) ** 2).sum())
            den += float((ref**2).sum())
    return float(np.sqrt(num / den)) if den else 0.0


METRICS = ("max", "perplexity")


def _token_ids(feed: Feed) -> np.ndarray:
    ids = feed.get("input_ids")
    if ids is None:
        integers = [v for v in feed.values() if np.issubdtype(np.asarray(v).dtype, np.integer)]
        ids = integers[0] if len(integers) == 1 else None
    if ids is None or np.asarray(ids).ndim != 2:
        raise InputError(
            "the perplexity metric needs a causal LM: an input 'input_ids' [batch, tokens]"
        )
    return np.asarray(ids)


def _logits(outputs: dict[str, np.ndarray]) -> np.ndarray:
    logits = outputs.get("logits")
    if logits is None:
        ranked = [v for v in outputs.values() if np.asarray(v).ndim == 3]
        logits = ranked[0] if len(ranked) == 1 else None
    if logits is None:
        raise InputError(
            "the perplexity metric needs a causal LM: an output 'logits' [batch, tokens, vocab]"
        )
    return np.asarray(logits)


def perplexity(outputs: list[dict], feeds: Sequence[Feed]) -> float:
    """``exp`` of the mean next-token negative log-likelihood: position ``t``'s logits scored
    against token ``t + 1`` of the same feed (``log_softmax`` in float64)."""
    total, count = 0.0, 0
    for out, feed in zip(outputs, feeds, strict=True):
        ids = _token_ids(feed)
        logits = _logits(out)[:, :-1].astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(logits).sum(axis=-1))
        picked = np.take_along_axis(logits, ids[:, 1:, None], axis=-1)[..., 0]
        total += float((log_z - picked).sum())
        count += picked.size
    return float(np.exp(total / max(count, 1)))


class AccuracyBudget:
    """Measures lossy passes on ``feeds`` and rolls back those above ``budget``.

    ``metric``: ``max`` — the largest normalized max error over the outputs
    (:func:`compiler.numerics.max_error`); ``perplexity`` — for causal LMs, the relative
    perplexity increase ``ppl(after) / ppl(before) − 1`` on the feeds' own tokens (held-out text
    windows), which weighs every token as the model's users do instead of its single worst logit.
    """

    def __init__(
        self,
        feeds: Sequence[Feed],
        budget: float,
        *,
        input_outputs: list[dict] | None = None,
        metric: str = "max",
    ) -> None:
        """``input_outputs``: the input model's outputs on ``feeds``, if already computed."""
        if not feeds:
            raise ValueError("an accuracy budget needs at least one input feed")
        if metric not in METRICS:
            raise InputError(f"unknown accuracy metric {metric!r}; known: {', '.join(METRICS)}")
        self.metric = metric
        self.feeds = list(feeds)
        self.budget = budget
        self.records: list[AccuracyRecord] = []
        self._input_outputs: list[dict] | None = input_outputs
        self._current: list[dict] | None = input_outputs  # the model as it stands

    def start(self, model: ir.Model) -> None:
        """Runs the input model once; later errors are measured against it too."""
        self._input_outputs = self._current = outputs_on(model, self.feeds)

    def invalidate(self) -> None:
        """A pass changed the model: the next lossy pass re-measures its starting point."""
        self._current = None

    def probe(self, before: ir.Model, after: ir.Model) -> float:
        """The error of ``after`` against ``before`` on the feeds, not recorded (a measurement
        for ranking, e.g. one layer's sensitivity)."""
        if self._current is None:
            self._current = outputs_on(before, self.feeds)
        return self.error(outputs_on(after, self.feeds), self._current)

    def error(self, actual: list[dict], expected: list[dict]) -> float:
        """``actual`` against ``expected`` (outputs on the feeds) by this budget's metric."""
        if self.metric == "perplexity":
            return perplexity(actual, self.feeds) / perplexity(expected, self.feeds) - 1.0
        return worst_error(actual, expected)

    def check(
        self,
        pass_name: str,
        before: ir.Model,
        after: ir.Model,
        *,
        kept_in_float: list[str] | None = None,
    ) -> bool:
        """Records the error of ``after`` (the pass's result); returns True to keep it."""
        if self._input_outputs is None:
            self.start(before)
        if self._current is None:
            self._current = outputs_on(before, self.feeds)
        outputs = outputs_on(after, self.feeds)
        error = self.error(outputs, self._current)
        total = self.error(outputs, self._input_outputs)
        keep = error <= self.budget and total <= self.budget
        self.records.append(
            AccuracyRecord(pass_name, error, total, self.budget, not keep, kept_in_float or [])
        )
        if keep:
            self._current = outputs
        return keep
