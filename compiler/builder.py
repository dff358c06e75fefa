"""``build``: model in, artifact folder out — the spine every capability plugs into.

Steps: load (frontend) -> passes (pass manager with verify/timing/stats instruments) -> write the
optimized ONNX model -> compile with TVM -> write library, weights, report and manifest into a
temporary folder -> load that folder with :mod:`compiler.runtime` and compare its outputs on
seeded inputs with onnxruntime running the *input* model -> rename the folder into place.

A build whose compiled outputs differ from the reference by more than ``max_error`` (normalized
max error, :mod:`compiler.numerics`) fails and leaves nothing behind. The input model is only read.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from compiler import __version__
from compiler.artifact import (
    LIBRARY_FILE,
    ONNX_FILE,
    REPORT_FILE,
    WEIGHTS_FILE,
    atomic_directory,
    write_json,
    write_manifest,
)
from compiler.errors import BackendError, CompilerError
from compiler.instruments import (
    DumpInstrument,
    NumericCheckInstrument,
    StatsInstrument,
    TimingInstrument,
    VerifyInstrument,
)
from compiler.model_info import TensorSpec, concrete_shape, model_stats, signature
from compiler.numerics import max_error, random_inputs
from compiler.pass_manager import PassManager
from compiler.pass_registry import PassRegistry
from compiler.pipeline import build_passes
from passes.fusion import fusion_coverage

__all__ = ["DEFAULT_MAX_ERROR", "BuildResult", "build", "example_inputs_for"]

DEFAULT_MAX_ERROR = 1e-4  # fp32, lossless pipelines: TVM and onnxruntime differ by reassociation

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
    """Saves weights as safetensors (raw bits where safetensors lacks the dtype)."""
    from safetensors.numpy import save_file

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
    save_file(tensors, str(directory / WEIGHTS_FILE))
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
    max_error_budget: float = DEFAULT_MAX_ERROR,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    tuning_db: str | Path | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """Builds ``source`` (path, ``onnx_ir.Model``, or torch module) into ``output_dir``.

    ``passes`` (a text pipeline) overrides ``pipeline`` (a named one: ``O0``, ``O1``).
    ``check_numerics`` runs onnxruntime after every pass and names the first that drifts.
    ``tuning_db`` is a folder written by ``compiler tune``: kernels with records use them.
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
    check_inputs = example_inputs_for(inputs_spec, seed=seed, dims=dims)
    # The reference runs on the untouched input model, before any pass edits the IR in place.
    step("running the input model in onnxruntime (reference)")
    t0 = time.perf_counter()
    from backends.onnxruntime.reference import run_reference

    reference = run_reference(model, check_inputs) if verify else {}
    timings["reference"] = time.perf_counter() - t0
    stats_in = model_stats(model)

    pipeline_text = passes if passes is not None else pipeline
    pass_list = build_passes(pipeline_text, registry)
    timing, stats = TimingInstrument(), StatsInstrument()
    instruments = [VerifyInstrument(), timing, stats]
    numeric = None
    if check_numerics:
        numeric = NumericCheckInstrument(check_inputs)
        instruments.append(numeric)
    if dump_dir is not None:
        instruments.append(DumpInstrument(dump_dir))
    step(f"running passes: {pipeline_text or '(none)'}")
    t0 = time.perf_counter()
    result = PassManager(pass_list, instruments).run(model)
    model = result.model
    timings["passes"] = time.perf_counter() - t0

    from backends.onnxruntime.writer import save_model
    from backends.tvm.compile import compile_model

    step("compiling with TVM")
    t0 = time.perf_counter()
    compiled = compile_model(model, target, model_name=source_name, tuning_db=tuning_db)
    timings["compile"] = time.perf_counter() - t0

    with atomic_directory(output_dir) as tmp:
        step("writing the artifact")
        t0 = time.perf_counter()
        compiled.export_library(tmp / LIBRARY_FILE)
        weight_order = _write_weights(tmp, compiled.param_names, compiled.params)
        save_model(model, tmp / ONNX_FILE)
        timings["write"] = time.perf_counter() - t0
        manifest_base = {
            "name": Path(source_name).stem if isinstance(source, (str, Path)) else source_name,
            "inputs": [s.to_json() for s in inputs_spec],
            "outputs": [s.to_json() for s in outputs_spec],
            "target": compiled.target,
            "library": LIBRARY_FILE,
            "weights": {"file": WEIGHTS_FILE, "order": weight_order},
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
                _verify(tmp, check_inputs, reference, max_error_budget, compiled.target)
            )
            timings["verify"] = time.perf_counter() - t0
        report = {
            "model": source_name,
            "pipeline": pipeline_text,
            "passes": [
                {
                    "name": name,
                    "modified": modified,
                    "seconds": seconds,
                    "after": after.to_json(),
                    **(
                        {"numeric_error": numeric.records[i].errors}
                        if numeric is not None and i < len(numeric.records)
                        else {}
                    ),
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
            "timings_seconds": timings,
        }
        write_json(tmp / REPORT_FILE, report)
        manifest = write_manifest(tmp, manifest_base)
    return BuildResult(Path(output_dir), report, manifest)


def _verify(
    directory: Path,
    inputs: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    budget: float,
    target: dict[str, Any],
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
    if not worst <= budget:
        name = max(errors, key=errors.get)
        raise BackendError(
            f"the compiled model's output {name!r} differs from onnxruntime by a normalized "
            f"error of {worst:.3g}, above the budget {budget:.3g}"
        )
    return {
        "reference": "onnxruntime (input model, before passes)",
        "inputs": "seeded random (floats N(0,1), integers in [0, 2))",
        "errors": errors,
        "max_error": worst,
        "budget": budget,
        "passed": True,
    }
