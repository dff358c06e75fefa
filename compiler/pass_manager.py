"""Runs a list of passes with instruments, and reports failures by pass name.

Built on ``onnx_ir.passes``: each pass is an ``onnx_ir.passes.PassBase`` whose ``__call__`` checks
its ``requires`` (preconditions) and ``ensures`` (postconditions). This manager adds what a
compiler needs around that:

* instruments (:mod:`compiler.instruments`): hooks before/after the pipeline and every pass —
  verification, timing, IR dumps, numeric checkpoints against the reference runtime;
* error budgets (:mod:`compiler.accuracy`): a lossy pass whose output error exceeds the budget
  is rolled back;
* errors: any exception from a pass becomes a :class:`~compiler.errors.PassFailedError` naming the
  pass and the passes that ran before it; a failed precondition says what is missing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from compiler.accuracy import AccuracyBudget, is_lossy
from compiler.errors import CompilerError, PassFailedError

__all__ = ["Instrument", "PassContext", "PassManager", "PipelineResult", "pass_name"]


ROLLBACK_ATTEMPTS = 3  # per-layer rollback: a quarter, half, three quarters of the layers kept
# Up to this many layers, the per-layer rollback measures each layer's sensitivity (the pass
# applied to that layer alone: one pass run and one model evaluation per layer); beyond, it ranks
# layers by the errors the pass recorded.
SENSITIVITY_MAX_LAYERS = 64


@dataclasses.dataclass
class PassContext:
    """What passes may use besides the model. A pass that declares an attribute ``context``
    receives this object before it runs.

    ``calibration``: a :class:`compiler.calibration.Calibration` (model feeds), or ``None``.
    """

    calibration: Any = None


def pass_name(pass_: ir.passes.PassBase) -> str:
    """The registry name of a pass, or its class name for an unregistered one."""
    return getattr(pass_, "name", None) or type(pass_).__name__


class Instrument:
    """Hooks called around a pipeline and each pass. Subclasses override what they need."""

    def before_pipeline(self, model: ir.Model) -> None:
        """Called once with the input model, before any pass."""

    def before_pass(self, index: int, pass_: ir.passes.PassBase, model: ir.Model) -> None:
        """Called before pass number ``index`` (0-based) runs."""

    def after_pass(
        self, index: int, pass_: ir.passes.PassBase, result: ir.passes.PassResult
    ) -> None:
        """Called after pass number ``index`` returned ``result``."""

    def after_pipeline(self, model: ir.Model) -> None:
        """Called once with the final model."""


@dataclasses.dataclass
class PipelineResult:
    """The final model, whether any pass changed it, and which passes did."""

    model: ir.Model
    modified: bool
    applied: list[tuple[str, bool]]


class PassManager:
    """Runs ``passes`` in order on a model, calling ``instruments`` around each.

    ``steps`` repeats the whole list (stopping early once a round changes nothing when
    ``early_stop``), like ``onnx_ir.passes.PassManager``.
    """

    def __init__(
        self,
        passes: Sequence[ir.passes.PassBase],
        instruments: Sequence[Instrument] = (),
        *,
        steps: int = 1,
        early_stop: bool = True,
        context: PassContext | None = None,
        accuracy: AccuracyBudget | None = None,
    ) -> None:
        self.passes = list(passes)
        self.context = context or PassContext()
        self.accuracy = accuracy
        self.instruments = list(instruments)
        self.steps = steps
        self.early_stop = early_stop

    def __call__(self, model: ir.Model) -> PipelineResult:
        return self.run(model)

    def run(self, model: ir.Model) -> PipelineResult:
        for instrument in self.instruments:
            instrument.before_pipeline(model)
        applied: list[tuple[str, bool]] = []
        index = 0
        for _ in range(self.steps):
            round_modified = False
            for pass_ in self.passes:
                model, modified = self._run_one(index, pass_, model, [n for n, _ in applied])
                applied.append((pass_name(pass_), modified))
                round_modified |= modified
                index += 1
            if self.early_stop and not round_modified:
                break
        for instrument in self.instruments:
            instrument.after_pipeline(model)
        return PipelineResult(model, any(m for _, m in applied), applied)

    def _per_layer_rollback(
        self, pass_, name: str, backup: ir.Model, failed: ir.Model
    ) -> ir.passes.PassResult:
        """Re-runs ``pass_`` from ``backup`` leaving its worst layers out, a quarter more each
        attempt, up to ``ROLLBACK_ATTEMPTS``; the model before the pass if none fits the budget.
        Needs ``pass_.without_nodes`` and ``pass_.layer_errors``.

        "Worst" is the measured sensitivity — the error of the pass applied to that layer alone
        — for up to ``SENSITIVITY_MAX_LAYERS`` layers, else the error the pass recorded for the
        layer (local errors partly cancel downstream, so they rank less reliably)."""
        if not (hasattr(pass_, "without_nodes") and hasattr(pass_, "layer_errors")):
            return ir.passes.PassResult(backup, modified=False)
        from compiler.ir_utils import read_records

        key = getattr(pass_, "record_key", None)
        before = len(read_records(backup, key)) if key else 0
        errors = pass_.layer_errors(read_records(failed, key)[before:]) if key else {}
        if 1 < len(errors) <= SENSITIVITY_MAX_LAYERS:
            errors = self._sensitivities(pass_, backup, set(errors))
        ranked = sorted(errors, key=errors.get, reverse=True)
        step = max(1, len(ranked) // 4)
        for attempt in range(1, ROLLBACK_ATTEMPTS + 1):
            skipped = set(ranked[: step * attempt])
            if not skipped or len(skipped) >= len(ranked):
                break
            candidate = backup.clone()
            retry = pass_.without_nodes(skipped)
            if hasattr(retry, "context"):
                retry.context = self.context
            result = retry(candidate)
            label = f"{name} (without {len(skipped)} of {len(ranked)} layers)"
            if self.accuracy.check(label, backup, result.model, kept_in_float=sorted(skipped)):
                return result
        return ir.passes.PassResult(backup, modified=False)

    def _sensitivities(self, pass_, backup: ir.Model, layers: set[str]) -> dict[str, float]:
        """Per layer: the error of ``pass_`` applied to that layer alone."""
        errors = {}
        for layer in sorted(layers):
            alone = pass_.without_nodes(layers - {layer})
            if hasattr(alone, "context"):
                alone.context = self.context
            errors[layer] = self.accuracy.probe(backup, alone(backup.clone()).model)
        return errors

    def _run_one(
        self, index: int, pass_: ir.passes.PassBase, model: ir.Model, before: list[str]
    ) -> tuple[ir.Model, bool]:
        name = pass_name(pass_)
        after = f" (after {', '.join(before)})" if before else " (the first pass)"
        for instrument in self.instruments:
            instrument.before_pass(index, pass_, model)

        def failed(message: str) -> PassFailedError:
            return PassFailedError(message, pass_name=name, passes_before=before)

        if hasattr(pass_, "context"):
            pass_.context = self.context
        guarded = self.accuracy is not None and is_lossy(pass_)
        backup = model.clone() if guarded else None
        try:
            result = pass_(model)
        except PassFailedError:
            raise
        except CompilerError as e:
            raise failed(f"pass {name!r} failed{after}: {e}") from e
        except ir.passes.PreconditionError as e:
            cause = f": {e.__cause__}" if e.__cause__ else ""
            raise failed(f"pass {name!r} cannot run{after}: {e}{cause}") from e
        except Exception as e:
            raise failed(f"pass {name!r} failed{after}: {type(e).__name__}: {e}") from e
        if self.accuracy is not None and result.modified:
            if guarded and not self.accuracy.check(name, backup, result.model):
                # Over budget: retry without the worst layers (passes that support it), else
                # restore the model before the pass; the records say which.
                result = self._per_layer_rollback(pass_, name, backup, result.model)
            elif not guarded:
                self.accuracy.invalidate()
        for instrument in self.instruments:
            try:
                instrument.after_pass(index, pass_, result)
            except PassFailedError:
                raise
            except CompilerError as e:
                raise failed(f"after pass {name!r}{after}: {e}") from e
        return result.model, result.modified
