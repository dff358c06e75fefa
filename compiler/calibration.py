"""Calibration data: loading it, and the activation statistics lossy passes compute from it.

A calibration set is a list of *feeds* (``{input name: array}``), one model run each.

* ``.npz``: one array per model input, named like the input; an extra leading axis holds several
  samples (``[samples, *input shape]``).
* text (``.txt``): tokenized with ``tokenizer`` and cut into windows of the model's sequence
  length for its token-id input (``input_ids``); an ``attention_mask`` input gets ones.

:func:`input_gram_matrices` runs the model in onnxruntime with chosen intermediate values as extra
outputs and accumulates ``XᵀX`` over all rows ``x`` of each value (last axis = features), which
GPTQ and activation-aware passes need.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from compiler.errors import InputError
from compiler.model_info import signature

__all__ = [
    "Calibration",
    "InputStats",
    "activation_ranges",
    "calibration_feeds",
    "input_gram_matrices",
    "load_calibration",
    "text_windows",
]

Feed = dict[str, np.ndarray]


@dataclasses.dataclass
class Calibration:
    """Model feeds for calibration, and where they came from (for the report)."""

    feeds: list[Feed]
    source: str

    def __len__(self) -> int:
        return len(self.feeds)


def _load_npz(path: Path, model: ir.Model) -> list[Feed]:
    inputs, _ = signature(model)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except ValueError as e:  # object arrays: numpy refuses to unpickle them
        raise InputError(f"{path}: holds object arrays (pickles), which are not loaded: {e}") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable .npz file: {e}") from e
    missing = [s.name for s in inputs if s.name not in arrays]
    if missing:
        raise InputError(f"{path}: no array for the model input(s) {missing}; has {sorted(arrays)}")
    samples = None
    batched: dict[str, np.ndarray] = {}
    for spec in inputs:
        array = arrays[spec.name]
        if array.ndim == len(spec.shape) + 1:
            count = array.shape[0]
        elif array.ndim == len(spec.shape):
            array, count = array[None], 1
        else:
            raise InputError(
                f"{path}: array {spec.name!r} has shape {list(array.shape)}; the input has rank "
                f"{len(spec.shape)} (add one leading axis for several samples)"
            )
        if samples not in (None, count):
            raise InputError(f"{path}: arrays hold different numbers of samples")
        samples = count
        batched[spec.name] = array.astype(np.dtype(spec.dtype), copy=False)
    return [{name: a[i] for name, a in batched.items()} for i in range(samples or 0)]


def calibration_feeds(context, what: str, samples: int = 0) -> list[Feed]:
    """The first ``samples`` (0: all) calibration feeds a pass was given through its context,
    or an error saying how to give them."""
    calibration = getattr(context, "calibration", None)
    if calibration is None:
        raise InputError(f"{what} needs calibration data: pass --calibration FILE")
    return calibration.feeds[: samples or None]


def text_windows(
    token_ids: Sequence[int], length: int, count: int | None = None
) -> list[np.ndarray]:
    """Consecutive non-overlapping windows of ``length`` tokens (``[1, length]`` int64 each)."""
    total = len(token_ids) // length
    if count is not None:
        total = min(total, count)
    return [
        np.asarray(token_ids[i * length : (i + 1) * length], np.int64)[None] for i in range(total)
    ]


def _load_text(path: Path, model: ir.Model, tokenizer: Any, samples: int | None) -> list[Feed]:
    if tokenizer is None:
        raise InputError(f"{path}: a text calibration file needs a tokenizer (--tokenizer)")
    inputs, _ = signature(model)
    names = [s.name for s in inputs]
    if "input_ids" not in names:
        raise InputError(f"{path}: text calibration needs a model input named 'input_ids'")
    ids_spec = next(s for s in inputs if s.name == "input_ids")
    length = ids_spec.shape[-1]
    if not isinstance(length, int):
        raise InputError(f"{path}: the model's sequence length is symbolic ({length!r})")
    ids = tokenizer(path.read_text("utf-8")).input_ids
    windows = text_windows(ids, length, samples)
    if not windows:
        raise InputError(f"{path}: {len(ids)} tokens is less than one window of {length}")
    feeds = []
    for window in windows:
        feed = {"input_ids": window}
        for spec in inputs:
            if spec.name == "attention_mask":
                feed["attention_mask"] = np.ones_like(window)
            elif spec.name != "input_ids":
                raise InputError(f"{path}: cannot make the input {spec.name!r} from text")
        feeds.append(feed)
    return feeds


def load_calibration(
    path: str | Path, model: ir.Model, *, tokenizer: Any = None, samples: int | None = None
) -> Calibration:
    """Reads a calibration file for ``model`` (``.npz``, or text with a ``tokenizer``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: calibration file not found")
    if path.suffix == ".npz":
        feeds = _load_npz(path, model)[:samples]
    else:
        feeds = _load_text(path, model, tokenizer, samples)
    if not feeds:
        raise InputError(f"{path}: no calibration samples")
    return Calibration(feeds, str(path))


@dataclasses.dataclass
class InputStats:
    """``XᵀX`` (float64, ``[K, K]``) over ``rows`` rows of one value; mean and max ``|x|``
    per feature; and ``first_gram``, ``XᵀX`` over the first position of every sequence only
    (``x[..., 0, :]`` of each feed's value, or its first row when it is 2-D) — where decoder LLMs
    keep their
    attention sink."""

    gram: np.ndarray
    abs_mean: np.ndarray
    rows: int
    first_gram: np.ndarray
    abs_max: np.ndarray


def input_gram_matrices(
    model: ir.Model, feeds: Iterable[Feed], values: Sequence[str]
) -> dict[str, InputStats]:
    """Runs ``model`` on each feed and accumulates statistics of the named ``values``."""
    from backends.onnxruntime.reference import ReferenceSession

    session = ReferenceSession(model, extra_outputs=list(values))
    stats: dict[str, InputStats] = {}
    for feed in feeds:
        outputs = session.run(feed)
        for name in values:
            array = np.asarray(outputs[name], np.float32)
            x = array.reshape(-1, array.shape[-1])
            first = (array[..., 0, :] if array.ndim >= 3 else array[:1]).reshape(-1, x.shape[1])
            gram = (x.T @ x).astype(np.float64)
            first_gram = (first.T @ first).astype(np.float64)
            entry = stats.get(name)
            if entry is None:
                abs_sum = np.abs(x).sum(0, dtype=np.float64)
                abs_max = np.abs(x).max(0).astype(np.float64)
                stats[name] = InputStats(gram, abs_sum, x.shape[0], first_gram, abs_max)
            else:
                entry.gram += gram
                entry.first_gram += first_gram
                entry.abs_mean += np.abs(x).sum(0, dtype=np.float64)
                np.maximum(entry.abs_max, np.abs(x).max(0), out=entry.abs_max)
                entry.rows += x.shape[0]
    for entry in stats.values():
        entry.abs_mean /= max(entry.rows, 1)
    return stats


def activation_ranges(
    model: ir.Model,
    feeds: Iterable[Feed],
    values: Sequence[str],
    *,
    method: str = "minmax",
    percentile: float = 99.99,
    max_samples: int = 1 << 20,
) -> dict[str, tuple[float, float]]:
    """``(low, high)`` of each named value over the feeds.

    ``minmax``: the extremes seen. ``percentile``: the ``100 − p`` and ``p`` percentiles of a
    uniform subsample (at most ``max_samples`` values per value and feed, seeded), which ignores
    rare outliers that would otherwise stretch an int8 grid. ``entropy``: the clipping threshold
    ``±T`` whose 128-level quantized histogram is closest (smallest KL divergence) to the
    measured 2048-bin histogram (TensorRT's entropy calibration, computed by onnxruntime's
    ``HistogramCollector``), intersected with the extremes seen.
    """
    from backends.onnxruntime.reference import ReferenceSession

    if method not in ("minmax", "percentile", "entropy"):
        raise InputError(f"unknown activation calibration method {method!r}")
    session = ReferenceSession(model, extra_outputs=list(values))
    rng = np.random.default_rng(0)
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    samples: dict[str, list[np.ndarray]] = {name: [] for name in values}
    histograms = _EntropyThresholds() if method == "entropy" else None
    for feed in feeds:
        outputs = session.run(feed)
        for name in values:
            x = np.asarray(outputs[name], np.float32).ravel()
            low[name] = min(low.get(name, np.inf), float(x.min()))
            high[name] = max(high.get(name, -np.inf), float(x.max()))
            if method == "percentile":
                if x.size > max_samples:
                    x = rng.choice(x, max_samples, replace=False)
                samples[name].append(x)
            if histograms is not None:
                histograms.collect(name, x)
    if method == "minmax":
        return {name: (low[name], high[name]) for name in values}
    if histograms is not None:
        thresholds = histograms.thresholds()
        return {
            name: (max(low[name], thresholds[name][0]), min(high[name], thresholds[name][1]))
            for name in values
        }
    ranges = {}
    for name in values:
        x = np.concatenate(samples[name])
        ranges[name] = (
            float(np.percentile(x, 100 - percentile)),
            float(np.percentile(x, percentile)),
        )
    return ranges


class _EntropyThresholds:
    """Per-value histograms and their KL-optimal symmetric thresholds, by onnxruntime's
    ``HistogramCollector`` (its progress prints are silenced)."""

    BINS, QUANTIZED_BINS = 2048, 128

    def __init__(self) -> None:
        from onnxruntime.quantization.calibrate import HistogramCollector

        self.collector = HistogramCollector(
            method="entropy",
            symmetric=False,
            num_bins=self.BINS,
            num_quantized_bins=self.QUANTIZED_BINS,
            percentile=99.99,
            scenario="same",
        )

    def collect(self, name: str, x: np.ndarray) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.collector.collect({name: x})

    def thresholds(self) -> dict[str, tuple[float, float]]:
        with contextlib.redirect_stdout(io.StringIO()):
            result = self.collector.compute_collection_result()
        return {name: (float(entry[0]), float(entry[1])) for name, entry in result.items()}


def value_peaks(model: ir.Model, feeds: Iterable[Feed], values: Sequence[str]) -> dict[str, float]:
    """``max |x|`` of each named float value over the feeds.

    Computed inside the graph — an ``Abs → ReduceMax`` probe per value, added for the session
    and removed again — so only one scalar per value leaves onnxruntime, not the activations
    themselves (thousands of values of a 512-token LLM run would not fit in memory).
    """
    from backends.onnxruntime.reference import ReferenceSession

    graph = model.graph
    by_name = {v.name: v for v in graph.inputs}
    by_name.update({v.name: v for node in graph for v in node.outputs})
    probes: list[ir.Node] = []
    outputs: dict[str, ir.Value] = {}
    for name in values:
        value = by_name.get(name)
        if value is None:
            raise InputError(f"no value named {name!r} in the model")
        absolute = ir.node("Abs", [value])
        peak = ir.node("ReduceMax", [absolute.outputs[0]], attributes={"keepdims": 0})
        peak.outputs[0].name = f"{name}__peak"
        peak.outputs[0].dtype, peak.outputs[0].shape = value.dtype, ir.Shape([])
        probes += [absolute, peak]
        outputs[name] = peak.outputs[0]
    graph.extend(probes)
    graph.outputs.extend(outputs.values())
    try:
        session = ReferenceSession(model)
    finally:
        for value in outputs.values():
            graph.outputs.remove(value)
        graph.remove(probes, safe=True)
    peaks = dict.fromkeys(values, 0.0)
    for feed in feeds:
        result = session.run(feed)
        for name, value in outputs.items():
            peaks[name] = max(peaks[name], float(np.nan_to_num(result[value.name], posinf=np.inf)))
    return peaks
