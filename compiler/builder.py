"""``build``: model in, artifact folder out — the spine every capability plugs into.

Steps: load (frontend) -> passes (pass manager with verify/timing/stats instruments) -> write the
optimized ONNX model -> compile with TVM -> write library, weights, report and manifest into a
temporary folder -> load that folder with :mod:`compiler.runtime` and compare its outputs on
seeded inputs with onnxruntime running the *input* model -> time it briefly against onnxruntime
-> write ``report.json`` and ``report.html`` -> rename the folder into place.

Two errors are kept apart:

* **accuracy** — what lossy passes (quantize, prune, …) cost: the optimized ONNX model against
  the input model, both in onnxruntime. With ``max_error``, a lossy pass whose error exceeds it
  is rolled back (:mod:`compiler.accuracy`); the report lists each lossy pass's error and the
  per-layer errors the passes recorded;
* **backend fidelity** — the compiled artifact against onnxruntime running the *optimized* model
  on the same inputs. Above ``tolerance`` (normalized max error, :mod:`compiler.numerics`) the
  build fails and leaves nothing behind.

The input model is only read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import platform
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from compiler import __version__
from compiler.accuracy import (
    AccuracyBudget,
    is_lossy,
    outputs_on,
    perplexity,
    relative_rms,
)
from compiler.artifact import (
    LIBRARY_FILE,
    MANIFEST_FILE,
    ONNX_FILE,
    REPORT_FILE,
    REPORT_HTML_FILE,
    WEIGHTS_FILE,
    atomic_directory,
    write_json,
    write_manifest,
)
from compiler.errors import BackendError, CompilerError, InputError
from compiler.instruments import (
    DumpInstrument,
    NumericCheckInstrument,
    StatsInstrument,
    TimingInstrument,
    VerifyInstrument,
)
from compiler.model_info import TensorSpec, concrete_shape, index_ranges, model_stats, signature
from compiler.numerics import max_error, random_inputs
from compiler.pass_manager import Instrument, PassContext, PassManager
from compiler.pass_registry import PassRegistry
from compiler.pipeline import build_passes
from compiler.threads import physical_cores
from passes.fusion import fusion_coverage
from passes.lowrank import lowrank_records
from passes.precision import cast_records
from passes.prune import prune_records
from passes.quantize import quantize_records

__all__ = ["DEFAULT_TOLERANCE", "BuildResult", "build", "example_inputs_for"]

# Backend fidelity in fp32: TVM and onnxruntime differ by float reassociation (and TVM's
# polynomial exp/tanh), which grows with depth: 1e-6 on 2 layers, 1.9e-4 on SmolLM2's 30 layers.
DEFAULT_TOLERANCE = 1e-3
# Relative RMS, artifact vs onnxruntime, for models with quantized activations (W8A8): measured
# 0.95% on MiniLM with real sentences, 5.2% with seeded random token ids (degenerate inputs).
QUANTIZED_ACTIVATION_TOLERANCE = 0.1
# Normalized max error, artifact vs onnxruntime, for models that compute in fp16: each runtime
# rounds its own intermediates to 11 bits (2^-11 = 4.9e-4 per rounding) in its own order;
# measured 1.6e-3 on a 2-matmul model.
HALF_PRECISION_TOLERANCE = 1e-2
ACCURACY_SAMPLES = 4  # calibration samples the accuracy budget runs (each is one model run)
# The build's latency check: a few interleaved runs, artifact vs onnxruntime, medians. Short
# gaps keep it cheap (`compiler bench` measures carefully, with longer pauses and more runs).
LATENCY_RUNS = 5
LATENCY_GAP_S = 0.02
# Above this, the latency check is skipped: onnxruntime and the artifact side by side would hold
# the weights twice (issue: a > 2 GiB build stays within 1.5x the weights' size).
LATENCY_MAX_WEIGHT_BYTES = 1 << 30

Progress = Callable[[str], None]


@dataclasses.dataclass
class BuildResult:
    """Where the artifact went, and the report and manifest written into it."""

    output_dir: Path
    report: dict[str, Any]
    manifest: dict[str, Any]


def _versions() -> dict[str, str]:
    versions = {"compiler": __version__, "python": platform.python_version()}
    for dist in (
        "apache-tvm",
        "apache-tvm-ffi",
        "onnx",
        "onnx-ir",
        "onnxscript",
        "onnxruntime",
        "numpy",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def example_inputs_for(
    specs: list[TensorSpec], *, seed: int = 0, dims: Mapping[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Seeded inputs matching ``specs`` (symbolic dims from ``dims``, else 1)."""
    return random_inputs(
        [(s.name, np.dtype(s.dtype), concrete_shape(s, dims)) for s in specs], seed=seed
    )


def _write_weights(directory: Path, names: list[str], arrays: list[np.ndarray]) -> list[dict]:
    """Saves weights as safetensors (raw bits where safetensors lacks the dtype), streamed one
    tensor at a time (:mod:`compiler.safetensors_io`: no in-memory copy of the weights)."""
    from compiler.safetensors_io import write_safetensors

    tensors: dict[str, np.ndarray] = {}
    order = []
    for i, (name, array) in enumerate(zip(names, arrays, strict=True)):
        key = f"p{i:05d}"
        stored = np.ascontiguousarray(array)
        if stored.dtype.kind == "V" or str(stored.dtype) in (
            "bfloat16",
            "float8_e4m3fn",
            "float8_e5m2",
            "int4",
            "uint4",
        ):
            stored = stored.view(np.dtype(f"u{stored.dtype.itemsize}"))
        tensors[key] = stored
        order.append(
            {"key": key, "name": name, "dtype": str(array.dtype), "shape": list(array.shape)}
        )
    write_safetensors(directory / WEIGHTS_FILE, tensors)
    return order


def build(
    source: Any,
    output_dir: str | Path,
    *,
    target: str | dict[str, Any] = "llvm",
    passes: str | None = None,
    pipeline: str = "O1",
    example_inputs: tuple[Any, ...] | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    registry: PassRegistry | None = None,
    verify: bool = True,
    check_numerics: bool = False,
    dump_dir: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_error: float | None = None,
    metric: str = "max",
    calibration: Any = None,
    tokenizer: Any = None,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    tuning_db: str | Path | None = None,
    latency_runs: int = LATENCY_RUNS,
    progress: Progress | None = None,
) -> BuildResult:
    """Builds ``source`` (path, ``onnx_ir.Model``, or torch module) into ``output_dir``.

    ``passes`` (a text pipeline) overrides ``pipeline`` (a named one: ``O0``, ``O1``).
    ``check_numerics`` runs onnxruntime after every pass and names the first that drifts.
    ``tuning_db`` is a folder written by ``compiler tune``: kernels with records use them.
    ``calibration``: an ``.npz`` or text file (text needs ``tokenizer``), or a
    :class:`compiler.calibration.Calibration`, for passes that use data (``quantize(method=gptq)``)
    and for measuring lossy passes. ``max_error`` is the accuracy budget of each lossy pass, by
    ``metric`` (``max``: normalized max error; ``perplexity``: relative perplexity increase of a
    causal LM on the calibration text, :class:`compiler.accuracy.AccuracyBudget`).
    ``latency_runs``: timed runs of the artifact and of onnxruntime for the report (0 skips).
    """
    from compiler.frontends import load

    step = progress or (lambda message: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    step("loading the model")
    if isinstance(source, (str, Path)):
        model = load(source)
    elif isinstance(source, ir.Model):
        model = source.clone()  # passes edit in place; the caller's model stays as it was
    else:
        names = {"input_names": input_names, "output_names": output_names}
        model = load(source, example_inputs, **{k: v for k, v in names.items() if v})
    source_name = str(source) if isinstance(source, (str, Path)) else type(source).__name__
    timings["load"] = time.perf_counter() - t0

    inputs_spec, outputs_spec = signature(model)
    ranges = index_ranges(model)  # token ids and other indices the runtime bounds-checks
    calib = _calibration(calibration, model, tokenizer)
    # Real inputs make the check meaningful for models whose numerics depend on the data
    # (quantized activations); without calibration data, seeded random ones.
    check_inputs = (
        dict(calib.feeds[0])
        if calib is not None
        else example_inputs_for(inputs_spec, seed=seed, dims=dims)
    )
    check_source = (
        f"the first calibration sample ({calib.source})"
        if calib is not None
        else "seeded random (floats N(0,1), integers in [0, 2))"
    )
    # The reference runs on the untouched input model, before any pass edits the IR in place.
    step("running the input model in onnxruntime (reference)")
    t0 = time.perf_counter()
    from backends.onnxruntime.reference import run_reference

    reference = run_reference(model, check_inputs) if verify else {}
    timings["reference"] = time.perf_counter() - t0
    stats_in = model_stats(model)

    pipeline_text = passes if passes is not None else pipeline
    pass_list = build_passes(pipeline_text, registry)
    if metric == "perplexity" and calib is None:
        raise InputError("--metric perplexity needs text to score: pass --calibration FILE")
    accuracy_feeds = calib.feeds[:ACCURACY_SAMPLES] if calib is not None else [check_inputs]
    accuracy_source = (
        f"{len(accuracy_feeds)} calibration samples from {calib.source}"
        if calib is not None
        else "seeded random inputs"
    )
    input_outputs = None  # the input model on the accuracy feeds, when lossy passes may run
    if verify and any(is_lossy(p) for p in pass_list):
        # accuracy_feeds[0] is check_inputs, whose outputs ``reference`` already holds.
        input_outputs = [reference, *outputs_on(model, accuracy_feeds[1:])]
    budget = None
    if max_error is not None or input_outputs is not None:
        # Without a budget, each lossy pass is still measured for the report (nothing rolled back).
        limit = max_error if max_error is not None else math.inf
        budget = AccuracyBudget(accuracy_feeds, limit, input_outputs=input_outputs, metric=metric)
    timing, stats = TimingInstrument(), StatsInstrument()
    pass_errors = _PassErrors(budget)
    instruments = [VerifyInstrument(), timing, stats, pass_errors]
    numeric = None
    if check_numerics:
        numeric = NumericCheckInstrument(check_inputs)
        instruments.append(numeric)
    if dump_dir is not None:
        instruments.append(DumpInstrument(dump_dir))
    step(f"running passes: {pipeline_text or '(none)'}")
    t0 = time.perf_counter()
    result = PassManager(
        pass_list, instruments, context=PassContext(calibration=calib), accuracy=budget
    ).run(model)
    model = result.model
    timings["passes"] = time.perf_counter() - t0
    lossy = any(
        modified and is_lossy(p) for p, (_, modified) in zip(pass_list, result.applied, strict=True)
    )
    accuracy: dict[str, Any] = {"lossy_passes_applied": lossy, "budget": max_error}
    if budget is not None and max_error is not None:
        accuracy["passes"] = [r.to_json() for r in budget.records]
    if lossy and verify:
        # The artifact must match the optimized model; the optimized model's distance to the
        # input model (on real inputs when there is calibration data) is what the passes cost.
        step("running the optimized model in onnxruntime")
        final = outputs_on(model, accuracy_feeds)
        optimized_reference = final[0]  # accuracy_feeds[0] is check_inputs
        accuracy["inputs"] = accuracy_source
        accuracy["metric"] = metric
        accuracy["error_vs_input_model"] = budget.error(final, input_outputs)
        accuracy["relative_rms_vs_input_model"] = relative_rms(final, input_outputs)
        if metric == "perplexity":
            accuracy["perplexity"] = {
                "input_model": perplexity(input_outputs, accuracy_feeds),
                "optimized_model": perplexity(final, accuracy_feeds),
            }
        reference = optimized_reference
    layers = quantize_records(model)
    if layers:
        accuracy["layers"] = layers
    for family, records in (
        ("prune", prune_records(model)),
        ("lowrank", lowrank_records(model)),
        ("cast", cast_records(model)),
    ):
        if records:
            accuracy[family] = records

    from backends.onnxruntime.writer import save_model
    from backends.tvm.compile import compile_model

    step("compiling with TVM")
    t0 = time.perf_counter()
    from compiler.stage_build import compile_stages, is_partitioned

    staged = is_partitioned(model)  # `partition` ran: one library per stage
    compile_fn = compile_stages if staged else compile_model
    extra = {"progress": step} if staged else {}
    compiled = compile_fn(model, target, model_name=source_name, tuning_db=tuning_db, **extra)
    timings["compile"] = time.perf_counter() - t0

    with atomic_directory(output_dir) as tmp:
        step("writing the artifact")
        t0 = time.perf_counter()
        if staged:
            code = compiled.write(tmp, _write_weights)
        else:
            compiled.export_library(tmp / LIBRARY_FILE)
            weight_order = _write_weights(tmp, compiled.param_names, compiled.params)
            compiled.params = []  # the artifact holds them now
            code = {
                "library": LIBRARY_FILE,
                "weights": {"file": WEIGHTS_FILE, "order": weight_order},
            }
        save_model(model, tmp / ONNX_FILE)
        timings["write"] = time.perf_counter() - t0
        _release_weights(model)
        manifest_base = {
            "name": Path(source_name).stem if isinstance(source, (str, Path)) else source_name,
            "inputs": [
                {**s.to_json(), **({"index_range": ranges[s.name]} if s.name in ranges else {})}
                for s in inputs_spec
            ],
            "outputs": [s.to_json() for s in outputs_spec],
            "target": compiled.target,
            **code,
            "onnx_model": ONNX_FILE,
            "pipeline": pipeline_text,
            "versions": _versions(),
        }
        verification: dict[str, Any] = {"enabled": verify}
        if verify:
            step("checking the compiled artifact against onnxruntime")
            # Hashes must exist for the runtime to load the folder: write a provisional manifest.
            write_json(tmp / REPORT_FILE, {})
            write_manifest(tmp, manifest_base)
            t0 = time.perf_counter()
            verification.update(
                _verify(
                    tmp,
                    check_inputs,
                    reference,
                    tolerance,
                    compiled.target,
                    lossy,
                    quantizes_activations(model),
                    computes_in_half(model),
                    check_source,
                )
            )
            timings["verify"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        latency = _latency(tmp, manifest_base, latency_runs, compiled.target, verify, step)
        if latency["measured"]:
            timings["latency"] = time.perf_counter() - t0
        report = {
            "model": source_name,
            "pipeline": pipeline_text,
            "passes": [
                {
                    "name": name,
                    "modified": modified,
                    "seconds": seconds,
                    "after": after.to_json(),
                    **pass_errors.entry(i, numeric),
                }
                for i, ((name, modified, after), (_, seconds)) in enumerate(
                    zip(stats.after, timing.timings, strict=True)
                )
            ],
            "input_model": stats_in.to_json(),
            "output_model": model_stats(model).to_json(),
            "fusion": fusion_coverage(model),
            "target": compiled.target,
            "tuning": {
                "database": str(tuning_db) if tuning_db is not None else None,
                "tuned_kernels": compiled.tuned_kernels,
            },
            "verification": verification,
            **({"partition": compiled.plan} if staged else {}),
            "accuracy": accuracy,
            "latency": latency,
            "timings_seconds": timings,
        }
        write_json(tmp / REPORT_FILE, report)
        from compiler.report_html import render_report

        files = {  # the payload; the manifest is rewritten below
            p.name: p.stat().st_size
            for p in sorted(tmp.iterdir())
            if p.is_file() and p.name != MANIFEST_FILE
        }
        (tmp / REPORT_HTML_FILE).write_text(render_report(report, files), encoding="utf-8")
        manifest = write_manifest(tmp, manifest_base)
    return BuildResult(Path(output_dir), report, manifest)


class _PassErrors(Instrument):
    """Which accuracy records (:class:`compiler.accuracy.AccuracyBudget`) each pass produced.

    The manager checks a lossy pass against the budget before the instruments' ``after_pass``,
    so the records added between ``before_pass`` and ``after_pass`` are that pass's: one, or
    several when a per-layer rollback retried it.
    """

    def __init__(self, budget: AccuracyBudget | None) -> None:
        self.budget = budget
        self.records: dict[int, list[dict]] = {}
        self._start = 0

    def before_pass(self, index, pass_, model) -> None:
        self._start = len(self.budget.records) if self.budget is not None else 0

    def after_pass(self, index, pass_, result) -> None:
        if self.budget is not None and len(self.budget.records) > self._start:
            self.records[index] = [r.to_json() for r in self.budget.records[self._start :]]

    def entry(self, index: int, numeric: NumericCheckInstrument | None) -> dict[str, Any]:
        """The error columns of pass ``index`` in the report's per-pass table.

        ``error``: the pass's result against the model before it (lossy passes, on the accuracy
        inputs); ``error_vs_input_model``: the model after the pass against the input model
        (lossy passes, or every pass under ``--check-numerics``); None where nothing measured.
        """
        entry: dict[str, Any] = {"error": None, "error_vs_input_model": None}
        records = self.records.get(index)
        if records:
            kept = [r for r in records if not r["rolled_back"]]
            chosen = kept[-1] if kept else records[0]
            entry["error"] = chosen["error"]
            entry["error_vs_input_model"] = chosen["total_error"]
            entry["rolled_back"] = not kept
            if chosen["kept_in_float"]:
                entry["kept_in_float"] = chosen["kept_in_float"]
        if numeric is not None and index < len(numeric.records):
            errors = numeric.records[index].errors
            entry["numeric_error"] = errors
            entry["error_vs_input_model"] = max(errors.values(), default=0.0)
        return entry


def _release_weights(model: ir.Model) -> None:
    """Unmaps the model's external (memory-mapped) weights: once the artifact is written they
    are not read again, and their resident pages would count against the build's memory while
    the artifact's own copy is loaded for verification. (A later read maps them again; a tensor
    still viewed elsewhere stays mapped.)"""
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            with contextlib.suppress(BufferError):  # still viewed elsewhere: stays mapped
                tensor.release()


def _latency(
    directory: Path,
    manifest_base: dict[str, Any],
    runs: int,
    target: dict[str, Any],
    manifest_written: bool,
    step: Progress,
) -> dict[str, Any]:
    """A short latency measurement of the artifact in ``directory`` against onnxruntime."""
    if runs <= 0:
        return {"measured": False, "reason": "skipped (latency_runs=0)"}
    weight_bytes = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    if weight_bytes > LATENCY_MAX_WEIGHT_BYTES:
        return {
            "measured": False,
            "reason": f"{weight_bytes / 2**30:.1f} GiB of weights: the build does not hold a "
            "second runtime's copy of them (measure with `compiler bench`)",
        }
    if target.get("kind") != "llvm":
        return {"measured": False, "reason": f"no {target.get('kind')} device on this machine"}
    from compiler.bench import bench_artifact

    step(f"timing the artifact against onnxruntime ({runs} runs each)")
    if not manifest_written:  # the runtime loads only folders with a manifest
        write_json(directory / REPORT_FILE, {})
        write_manifest(directory, manifest_base)
    try:
        result = bench_artifact(
            directory, runs=runs, warmup=1, threads=physical_cores(), gap_s=LATENCY_GAP_S
        )
    except CompilerError as e:  # a model onnxruntime cannot run still builds
        return {"measured": False, "reason": str(e)}
    return {
        "measured": True,
        **result.to_json(),
        "note": "a short check during the build; `compiler bench` measures with more runs",
    }


def quantizes_activations(model: ir.Model) -> bool:
    """Whether the model rounds activations to integers: a quantizer, or an integer matmul, on a
    non-constant input (per-token W8A8 quantizes with ``Round``/``Cast`` into ``MatMulInteger``)."""
    return any(
        node.op_type
        in ("QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "Round")
        and node.inputs[0] is not None
        and node.inputs[0].const_value is None
        for node in model.graph
    )


def computes_in_half(model: ir.Model) -> bool:
    """Whether some node computes a float16/bfloat16 activation (not just 16-bit weights)."""
    half = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    return any(
        value.dtype in half and value.const_value is None
        for node in model.graph
        if not all(i is None or i.const_value is not None for i in node.inputs)
        for value in node.outputs
    )


def _calibration(calibration: Any, model: ir.Model, tokenizer: Any):
    from compiler.calibration import Calibration, load_calibration

    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    return load_calibration(calibration, model, tokenizer=tokenizer)


def _verify(
    directory: Path,
    inputs: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    tolerance: float,
    target: dict[str, Any],
    optimized: bool,
    quantized_activations: bool,
    half_precision: bool,
    inputs_source: str,
) -> dict[str, Any]:
    """Runs the artifact through the deployment runtime and compares with the reference."""
    if target.get("kind") != "llvm":
        return {"enabled": False, "reason": f"no {target.get('kind')} device on this machine"}
    from compiler.runtime import load as load_artifact

    try:
        outputs = load_artifact(directory)(inputs)
    except CompilerError:
        raise
    except Exception as e:
        raise BackendError(f"the compiled model failed to run: {e}") from e
    errors = max_error(outputs, reference)
    worst = max(errors.values(), default=0.0)
    checked: dict[str, Any] = {"metric": "normalized max error"}
    if quantized_activations:
        # A quantizer's rounding flips on float noise (1e-6) and moves a value by a whole step,
        # so single elements may differ by a step between two correct runtimes: compare the
        # average-case error (relative RMS) instead.
        tolerance = max(tolerance, QUANTIZED_ACTIVATION_TOLERANCE)
        rms = relative_rms([outputs], [reference])
        checked = {"metric": "relative RMS (activations are quantized)", "relative_rms": rms}
        failed = (rms, "a relative RMS error") if not rms <= tolerance else None
    else:
        if half_precision:
            tolerance = max(tolerance, HALF_PRECISION_TOLERANCE)
            checked["metric"] = "normalized max error (activations computed in 16 bits)"
        failed = (worst, "a normalized max error") if not worst <= tolerance else None
    if failed:
        name = max(errors, key=errors.get)
        raise BackendError(
            f"the compiled model's output {name!r} differs from onnxruntime by {failed[1]} of "
            f"{failed[0]:.3g}, above the tolerance {tolerance:.3g} (--tolerance)"
        )
    return {
        **checked,
        "reference": (
            "onnxruntime (optimized model, after lossy passes)"
            if optimized
            else "onnxruntime (input model, before passes)"
        ),
        "inputs": inputs_source,
        "errors": errors,
        "max_error": worst,
        "tolerance": tolerance,
        "passed": True,
    }
