"""Error budgets for lossy passes: measure each one's output error, roll it back when over.

A pass declares itself lossy with a class attribute ``lossy = True`` (quantize, prune, lowrank,
cast). When the pass manager has an :class:`AccuracyBudget`, it runs the model in onnxruntime on
the budget's inputs before and after every lossy pass and measures the normalized max error
(:func:`compiler.numerics.max_error`, worst output) of the pass's result against the model as it
was before the pass. A pass whose error exceeds ``budget`` is rolled back: the model before it is
restored (a clone taken before the pass — cheap, tensors are shared), and the record says so.
Errors compound, so the budget is checked per pass *and* against the input model.

Per-layer rollback: a pass that can leave layers out (``without_nodes(names)``, with
``layer_errors(records)`` and ``record_key`` for its per-layer records — ``quantize`` does) is
first re-run from the clone without its worst layers (largest recorded error: output error on
calibration data, else weight error), a quarter of them more per attempt, up to three attempts
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


class AccuracyBudget:
    """Measures lossy passes on ``feeds`` and rolls back those above ``budget``."""

    def __init__(
        self, feeds: Sequence[Feed], budget: float, *, input_outputs: list[dict] | None = None
    ) -> None:
        """``input_outputs``: the input model's outputs on ``feeds``, if already computed."""
        if not feeds:
            raise ValueError("an accuracy budget needs at least one input feed")
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
        error = worst_error(outputs, self._current)
        total = worst_error(outputs, self._input_outputs)
        keep = error <= self.budget and total <= self.budget
        self.records.append(
            AccuracyRecord(pass_name, error, total, self.budget, not keep, kept_in_float or [])
        )
        if keep:
            self._current = outputs
        return keep
