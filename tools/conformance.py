"""ONNX conformance: the ONNX backend node tests through our build path, with the TVM backend.

Each node test (a one-node model, or its function expanded into primitive ops, with inputs and
expected outputs) is built with :func:`compiler.build` (``pipeline`` O0 by default, no
onnxruntime verification, no latency check) into an artifact folder, loaded with
:func:`compiler.runtime.load`, run, and compared with the expected outputs the way onnx's backend
runner does (``onnx.backend.test.runner.Runner.assert_similar_outputs``): same number of outputs,
same shapes and dtypes, ``np.testing.assert_allclose(rtol=1e-3, atol=1e-7)`` (the tolerances the
node tests carry; bfloat16 outputs get two bf16 ULPs, ``rtol >= 2**-6``, as onnx does).

Cases come from ``onnx.backend.test.case.node.collect_testcases()`` (the onnx wheel no longer
ships ``data/node``; ``--data DIR`` reads such folders of ``model.onnx`` + ``test_data_set_*``
instead). A case fails at one stage:

* ``import``: loading the file (checker, onnx_ir) or running the passes;
* ``convert``: TVM's ONNX importer (plus our converters, :mod:`backends.tvm.converters`);
* ``compile``: TVM's pipeline, code generation and linking the library;
* ``run``: loading the artifact and running it;
* ``result``: outputs differ from the expected ones (count, shape, dtype or values).

``timeout`` and ``crash`` (the worker died: a segfault or an abort in TVM) name the stage they
happened in. Every case runs in its own forked process (at most ``--jobs`` at a time) and is
killed with its process group after ``--timeout`` seconds.

Shape-like inputs. The node tests feed inputs that set shapes or were attributes in earlier
opsets (Reshape's ``shape``, Slice's ``starts``, ``axes``, ``pads``, TopK's ``K``, Clip's
``min``/``max``, …) as graph inputs, because the test format only has inputs. Exported models
hold them as constants, and our backend compiles static shapes, so by default such inputs (listed
per op in :data:`SHAPE_LIKE_INPUTS`) are made initializers holding the test's value before the
build; ``--runtime-shape-inputs`` keeps them as graph inputs, as generated.

Out of scope: cases matched by ``tools/conformance_out_of_scope.toml`` (each rule with its
reason) are reported but not run, and the pass rate counts in-scope cases only.

Time: 1,884 cases (1,684 in scope) took 24 min with 2 workers on the 2-core machine while other
jobs ran (0.1–0.5 s a case when idle: build, link, load, run). Cases run in a spread order (every
8th first), ``--json`` is rewritten every 100 cases (``"partial": true``), and ``--resume FILE``
skips the cases FILE already holds: an interrupted run is a spread sample, and can be completed.
``--sample N`` runs every N-th case only.

    python tools/conformance.py --quiet --json report.json          # the whole suite
    python tools/conformance.py --filter '^test_(abs|reshape)'      # a few cases, one line each
    python tools/conformance.py --quiet --resume report.json --json report.json   # complete it
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import tomllib
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# Two workers on two cores: one thread each (read when TVM's pool starts, in the workers).
os.environ.setdefault("TVM_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

STAGES = ("import", "convert", "compile", "run", "result")
OUT_OF_SCOPE_FILE = Path(__file__).with_name("conformance_out_of_scope.toml")
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_PIPELINE = "O0"
SPREAD = 8  # run order: every SPREAD-th case first (see main)
RTOL, ATOL = 1e-3, 1e-7  # onnx.backend.test.case.node.expect's defaults
BF16_RTOL = 2**-6  # onnx's runner: two bfloat16 ULPs
_ML_DTYPES = {"bfloat16", "int4", "uint4", "int2", "uint2", "float4_e2m1fn"} | {
    f"float8_{kind}" for kind in ("e4m3fn", "e4m3fnuz", "e5m2", "e5m2fnuz", "e8m0fnu")
}

# Inputs that set an output's shape, or that were attributes before the op's later opsets: an
# exported model holds them as constants. Keyed by op, then the input's name in the op's schema.
SHAPE_LIKE_INPUTS: dict[str, frozenset[str]] = {
    op: frozenset(names.split())
    for op, names in {
        "AffineGrid": "size",
        "BlackmanWindow": "size",
        "CenterCropPad": "shape",
        "Clip": "min max",
        "Col2Im": "image_shape block_shape",
        "ConstantOfShape": "input",
        "CumProd": "axis",
        "CumSum": "axis",
        "DFT": "dft_length axis",
        "Dropout": "ratio training_mode",
        "Expand": "shape",
        "HammingWindow": "size",
        "HannWindow": "size",
        "MaxUnpool": "output_shape",
        "MelWeightMatrix": "num_mel_bins dft_length sample_rate lower_edge_hertz upper_edge_hertz",
        "NonMaxSuppression": "max_output_boxes_per_class iou_threshold score_threshold",
        "OneHot": "depth",
        "Loop": "M cond",  # the trip count and first condition set the scan outputs' length
        "Pad": "pads constant_value axes",
        "Range": "start limit delta",
        "ReduceL1": "axes",
        "ReduceL2": "axes",
        "ReduceLogSum": "axes",
        "ReduceLogSumExp": "axes",
        "ReduceMax": "axes",
        "ReduceMean": "axes",
        "ReduceMin": "axes",
        "ReduceProd": "axes",
        "ReduceSum": "axes",
        "ReduceSumSquare": "axes",
        "Reshape": "shape",
        "Resize": "roi scales sizes",
        "STFT": "frame_step frame_length",
        "Slice": "starts ends axes steps",
        "Split": "split",
        "Squeeze": "axes",
        "Tile": "repeats",
        "TopK": "K",
        "Trilu": "k",
        "Unsqueeze": "axes",
        "Upsample": "scales",
    }.items()
}


@dataclasses.dataclass
class Case:
    """One node test: its model, inputs by name, expected outputs in order, tolerances."""

    name: str
    op: str
    model: onnx.ModelProto
    inputs: list[tuple[str, Any]]
    outputs: list[tuple[str, Any]]
    rtol: float = RTOL
    atol: float = ATOL
    out_of_scope: str | None = None  # the reason, when a rule matches


@dataclasses.dataclass
class Result:
    name: str
    op: str
    status: str  # passed, failed, timeout, crash, out_of_scope
    stage: str | None = None  # where it failed (STAGES)
    message: str = ""
    seconds: float = 0.0
    uncaught: bool = False  # an exception escaped our code that is no compiler.errors type

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Collecting the cases


def _op_label(node: onnx.NodeProto) -> str:
    domain = node.domain if node.domain not in ("", "ai.onnx") else ""
    return f"{domain}::{node.op_type}" if domain else node.op_type


def _model_op(model: onnx.ModelProto) -> str:
    nodes = model.graph.node
    return _op_label(nodes[0]) if len(nodes) == 1 else "(several nodes)"


def _expanded_base(name: str) -> str | None:
    match = re.match(r"(.+?)_expanded(_ver\d+)?$", name)
    return match.group(1) if match else None


def _assign_ops(cases: list[Case]) -> None:
    """Expanded tests (the op's function body) are grouped as ``Op (expanded)``."""
    by_name = {c.name: c for c in cases}
    for case in cases:
        base = _expanded_base(case.name)
        if base is not None and base in by_name:
            case.op = f"{by_name[base].op} (expanded)"


def _as_array(value: Any) -> Any:
    """Test values come as arrays, numpy scalars, or TensorProtos (dtypes numpy lacks)."""
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    return value


def generated_cases() -> list[Case]:
    """The node tests onnx generates (``onnx.backend.test.case.node.collect_testcases``)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        testcases = collect_testcases()
    cases = []
    for test in testcases:
        (inputs, outputs) = (list(map(_as_array, values)) for values in test.data_sets[0])
        graph = test.model.graph
        in_names = [v.name for v in graph.input]
        out_names = [v.name for v in graph.output]
        cases.append(
            Case(
                name=test.name,
                op=_model_op(test.model),
                model=test.model,
                inputs=list(zip(in_names, inputs, strict=False)),
                outputs=list(zip(out_names, outputs, strict=False)),
                rtol=test.rtol,
                atol=test.atol,
            )
        )
    _assign_ops(cases)
    return cases


def _read_value(path: Path, type_proto: onnx.TypeProto) -> Any:
    data = path.read_bytes()
    if type_proto.HasField("tensor_type"):
        tensor = onnx.TensorProto()
        tensor.ParseFromString(data)
        return onnx.numpy_helper.to_array(tensor)
    return data  # sequences, optionals, maps: out of scope, never compared


def directory_cases(root: Path) -> list[Case]:
    """Node tests stored as folders: ``NAME/model.onnx`` + ``NAME/test_data_set_0/*.pb``."""
    cases = []
    for folder in sorted(p for p in root.iterdir() if (p / "model.onnx").is_file()):
        model = onnx.load(str(folder / "model.onnx"))
        data = folder / "test_data_set_0"
        graph = model.graph
        inputs = [
            (v.name, _read_value(data / f"input_{i}.pb", v.type))
            for i, v in enumerate(graph.input)
            if (data / f"input_{i}.pb").exists()
        ]
        outputs = [
            (v.name, _read_value(data / f"output_{i}.pb", v.type))
            for i, v in enumerate(graph.output)
            if (data / f"output_{i}.pb").exists()
        ]
        cases.append(Case(folder.name, _model_op(model), model, inputs, outputs))
    _assign_ops(cases)
    return cases


# ---------------------------------------------------------------------------------------------
# Scope


@dataclasses.dataclass
class ScopeRule:
    """One out-of-scope rule: cases it matches are reported with ``reason`` and not run.

    A rule matches on one of: ``tests`` (a regex searched in the test name), ``ops`` (op names,
    the base op for expanded tests), ``domains`` (of any node in the model), ``dtypes`` (ONNX
    element types of any graph input or output, e.g. ``STRING``), ``value_types``
    (``sequence``, ``optional``, ``map``).
    """

    reason: str
    tests: re.Pattern[str] | None = None
    ops: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    dtypes: frozenset[str] = frozenset()
    value_types: frozenset[str] = frozenset()

    def matches(self, case: Case) -> bool:
        if self.tests is not None and self.tests.search(case.name):
            return True
        if case.op.removesuffix(" (expanded)").rpartition("::")[2] in self.ops:
            return True
        if self.domains and any(n.domain in self.domains for n in case.model.graph.node):
            return True
        if self.dtypes or self.value_types:
            for value in [*case.model.graph.input, *case.model.graph.output]:
                kind = value.type.WhichOneof("value")
                if kind == "tensor_type":
                    name = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
                    if name in self.dtypes:
                        return True
                elif kind and kind.removesuffix("_type") in self.value_types:
                    return True
        return False


def load_scope_rules(path: Path = OUT_OF_SCOPE_FILE) -> list[ScopeRule]:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    rules = []
    for i, entry in enumerate(data.get("rule", [])):
        unknown = set(entry) - {"reason", "tests", "ops", "domains", "dtypes", "value_types"}
        if unknown or not entry.get("reason"):
            raise ValueError(
                f"{path}: rule {i + 1}: needs a reason; unknown keys {sorted(unknown)}"
            )
        rules.append(
            ScopeRule(
                reason=entry["reason"],
                tests=re.compile(entry["tests"]) if "tests" in entry else None,
                ops=frozenset(entry.get("ops", ())),
                domains=frozenset(entry.get("domains", ())),
                dtypes=frozenset(entry.get("dtypes", ())),
                value_types=frozenset(entry.get("value_types", ())),
            )
        )
    return rules


def classify(cases: Iterable[Case], rules: list[ScopeRule]) -> None:
    for case in cases:
        case.out_of_scope = next((r.reason for r in rules if r.matches(case)), None)


# ---------------------------------------------------------------------------------------------
# Preparing a case's model


def _schema_input_names(node: onnx.NodeProto, opset: int) -> list[str]:
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return []
    names = [formal.name for formal in schema.inputs]
    if names and len(node.input) > len(names):  # a variadic last input
        names += [names[-1]] * (len(node.input) - len(names))
    return names


def fold_shape_inputs(case: Case) -> onnx.ModelProto:
    """The case's model with its shape-like graph inputs made initializers (test values)."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    values = dict(case.inputs)
    fold = set()
    for node in graph.node:
        wanted = SHAPE_LIKE_INPUTS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if not wanted:
            continue
        for name, formal in zip(node.input, _schema_input_names(node, opset), strict=False):
            if formal in wanted and isinstance(values.get(name), np.ndarray):
                fold.add(name)
    # An expanded case is the op's function body, its graph inputs named as the op's inputs.
    expanded_op = case.op.removesuffix(" (expanded)")
    if expanded_op != case.op:
        wanted = SHAPE_LIKE_INPUTS.get(expanded_op, frozenset())
        fold |= {
            v.name
            for v in graph.input
            if v.name in wanted and isinstance(values.get(v.name), np.ndarray)
        }
    if not fold:
        return model
    kept = [v for v in graph.input if v.name not in fold]
    for value in graph.input:
        if value.name in fold:
            graph.initializer.append(onnx.numpy_helper.from_array(values[value.name], value.name))
    del graph.input[:]
    graph.input.extend(kept)
    return model


# ---------------------------------------------------------------------------------------------
# Running one case (inside a forked worker)


def compare(
    expected: list[tuple[str, Any]], actual: dict[str, np.ndarray], rtol: float, atol: float
) -> str | None:
    """None when ``actual`` matches ``expected`` as onnx's backend runner checks; else why not."""
    if len(actual) != len(expected):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for name, ref in expected:
        if name not in actual:
            return f"output {name!r} is missing"
        out, ref = np.asarray(actual[name]), np.asarray(ref)
        if out.shape != ref.shape:
            return f"output {name!r} has shape {list(out.shape)}, expected {list(ref.shape)}"
        if out.dtype != ref.dtype:
            return f"output {name!r} has dtype {out.dtype}, expected {ref.dtype}"
        tolerance = max(rtol, BF16_RTOL) if out.dtype.name == "bfloat16" else rtol
        if out.dtype.kind == "V" or out.dtype.name in _ML_DTYPES:
            # ml_dtypes' types (bfloat16, float8, int4, ...) do not promote with Python floats
            # in np.isclose; as onnx's runner does for bfloat16, compare in float32 (exact).
            out, ref = out.astype(np.float32), ref.astype(np.float32)
        try:
            np.testing.assert_allclose(out, ref, rtol=tolerance, atol=atol)
        except AssertionError as e:
            detail = " ".join(
                line.strip() for line in str(e).splitlines() if "Mismatch" in line or "Max" in line
            )
            return f"output {name!r} differs: {detail}"
    return None


def _one_line(text: str, workdir: Path) -> str:
    text = str(text).replace(f"{workdir}/{workdir.name}.onnx: ", "").replace(f"{workdir}/", "")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else "")[:300]


_STEP_STAGES = (  # compiler.build's progress messages -> our stage
    ("loading", "import"),
    ("running passes", "import"),
    ("compiling", "convert"),
    ("writing", "compile"),
)


def run_case(
    case: Case,
    workdir: Path,
    *,
    pipeline: str,
    fold_shapes: bool,
    report_stage: Callable[[str], None],
) -> Result:
    """Builds, loads, runs and checks ``case`` in ``workdir``; never raises."""
    import compiler
    import compiler.runtime
    from compiler.errors import CompilerError

    start = time.perf_counter()
    stage = "import"

    def set_stage(new: str) -> None:
        nonlocal stage
        stage = new
        report_stage(new)

    def step(message: str) -> None:
        for prefix, name in _STEP_STAGES:
            if message.startswith(prefix):
                set_stage(name)

    def failed(message: str, uncaught: bool = False) -> Result:
        return Result(
            case.name,
            case.op,
            "failed",
            stage,
            _one_line(message, workdir),
            time.perf_counter() - start,
            uncaught,
        )

    workdir.mkdir(parents=True, exist_ok=True)
    model = fold_shape_inputs(case) if fold_shapes else case.model
    model_path = workdir / f"{case.name}.onnx"
    onnx.save(model, str(model_path))
    runtime_inputs = {i.name for i in model.graph.input}
    feeds = {name: value for name, value in case.inputs if name in runtime_inputs}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiler.build(
                model_path,
                workdir / "artifact",
                pipeline=pipeline,
                verify=False,
                latency_runs=0,
                progress=step,
            )
    except CompilerError as e:
        if stage == "convert" and "TVM compilation failed" in str(e):
            set_stage("compile")
        return failed(str(e))
    except Exception as e:  # a bug of ours: every deliberate error is a CompilerError
        return failed(f"{type(e).__name__}: {e}", uncaught=True)
    set_stage("run")
    try:
        with np.errstate(all="ignore"):
            outputs = compiler.runtime.load(workdir / "artifact")(feeds)
    except CompilerError as e:
        return failed(str(e))
    except Exception as e:
        return failed(f"{type(e).__name__}: {e}", uncaught=True)
    set_stage("result")
    with np.errstate(all="ignore"):
        mismatch = compare(case.outputs, outputs, case.rtol, case.atol)
    if mismatch:
        return failed(mismatch)
    return Result(case.name, case.op, "passed", seconds=time.perf_counter() - start)


def _worker(case: Case, conn, workdir: Path, pipeline: str, fold_shapes: bool) -> None:
    os.setpgid(0, 0)  # the parent kills the whole group (and any linker we started) on timeout
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # TVM prints conversion errors; the report carries them
    os.dup2(devnull, 2)
    try:
        result = run_case(
            case,
            workdir,
            pipeline=pipeline,
            fold_shapes=fold_shapes,
            report_stage=lambda stage: conn.send(("stage", stage)),
        )
        conn.send(("result", result))
    finally:
        conn.close()
        os._exit(0)  # skip atexit handlers inherited from the parent


@dataclasses.dataclass
class _Running:
    process: Any
    case: Case
    started: float
    stage: str = "import"


def _kill(process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # not yet its own group leader
        process.kill()
    process.join()


def run_cases(
    cases: list[Case],
    *,
    jobs: int = 2,
    timeout: float = DEFAULT_TIMEOUT_S,
    pipeline: str = DEFAULT_PIPELINE,
    fold_shapes: bool = True,
    on_result: Callable[[Result], None] = lambda r: None,
) -> list[Result]:
    """Runs in-scope cases in forked workers; out-of-scope ones are reported without running."""
    # Imported once here so every forked worker starts with TVM and the compiler loaded, and all
    # of them run the same converters even if the files change during a long run.
    import backends.tvm.converters
    import backends.tvm.quantized  # noqa: F401
    import compiler.runtime  # noqa: F401
    from backends.tvm import compile as _  # noqa: F401

    context = multiprocessing.get_context("fork")
    results: list[Result] = []

    def finish(result: Result) -> None:
        results.append(result)
        on_result(result)

    pending = []
    for case in cases:
        if case.out_of_scope:
            finish(Result(case.name, case.op, "out_of_scope", message=case.out_of_scope))
        else:
            pending.append(case)
    pending.reverse()
    base = Path(tempfile.mkdtemp(prefix="conformance-"))
    running: dict[Any, _Running] = {}
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                case = pending.pop()
                receive, send = context.Pipe(duplex=False)
                args = (case, send, base / case.name, pipeline, fold_shapes)
                process = context.Process(target=_worker, args=args, daemon=True)
                process.start()
                send.close()
                running[receive] = _Running(process, case, time.monotonic())
            for conn in multiprocessing.connection.wait(list(running), timeout=0.5):
                job = running[conn]
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    job.process.join()
                    code = job.process.exitcode
                    why = f"signal {-code}" if code and code < 0 else f"exit code {code}"
                    payload = Result(
                        job.case.name,
                        job.case.op,
                        "crash",
                        job.stage,
                        f"the worker died ({why}) during {job.stage}",
                        time.monotonic() - job.started,
                    )
                    kind = "result"
                if kind == "stage":
                    job.stage = payload
                    continue
                del running[conn]
                conn.close()
                job.process.join()
                shutil.rmtree(base / job.case.name, ignore_errors=True)
                finish(payload)
            now = time.monotonic()
            for conn, job in list(running.items()):
                if now - job.started > timeout:
                    _kill(job.process)
                    del running[conn]
                    conn.close()
                    shutil.rmtree(base / job.case.name, ignore_errors=True)
                    message = f"no result after {timeout:g} s (during {job.stage})"
                    finish(
                        Result(job.case.name, job.case.op, "timeout", job.stage, message, timeout)
                    )
    finally:
        for job in running.values():
            _kill(job.process)
        shutil.rmtree(base, ignore_errors=True)
    return results


# ---------------------------------------------------------------------------------------------
# Reporting


def summarize(results: list[Result]) -> dict[str, Any]:
    """Totals, pass rate over in-scope cases, failures by stage, and a row per op."""
    in_scope = [r for r in results if r.status != "out_of_scope"]
    passed = sum(r.status == "passed" for r in in_scope)
    ops: dict[str, dict[str, Any]] = {}
    for r in sorted(results, key=lambda r: r.name):
        row = ops.setdefault(
            r.op,
            {"passed": 0, "in_scope": 0, "out_of_scope": 0, "stages": Counter(), "first": None},
        )
        if r.status == "out_of_scope":
            row["out_of_scope"] += 1
            continue
        row["in_scope"] += 1
        if r.status == "passed":
            row["passed"] += 1
            continue
        row["stages"][r.stage if r.status == "failed" else f"{r.status}:{r.stage}"] += 1
        if row["first"] is None:
            row["first"] = {
                "test": r.name,
                "stage": r.stage,
                "status": r.status,
                "message": r.message,
            }
    for row in ops.values():
        row["stages"] = dict(row["stages"])
    stages = Counter(
        r.stage if r.status == "failed" else f"{r.status}:{r.stage}"
        for r in in_scope
        if r.status != "passed"
    )
    reasons = Counter(r.message for r in results if r.status == "out_of_scope")
    return {
        "total": len(results),
        "in_scope": len(in_scope),
        "out_of_scope": len(results) - len(in_scope),
        "passed": passed,
        "pass_rate": passed / len(in_scope) if in_scope else None,
        "failures_by_stage": dict(stages.most_common()),
        "uncaught_errors": sum(r.uncaught for r in results),
        "out_of_scope_reasons": dict(reasons.most_common()),
        "ops": ops,
    }


def format_table(summary: dict[str, Any]) -> str:
    rows = sorted(
        summary["ops"].items(),
        key=lambda kv: (kv[1]["passed"] == kv[1]["in_scope"], -kv[1]["in_scope"], kv[0]),
    )
    width = max([len(op) for op, _ in rows] + [2])
    lines = [f"{'op':<{width}}  passed  out   first failure"]
    for op, row in rows:
        first = row["first"]
        failure = ""
        if first:
            status = "" if first["status"] == "failed" else f"{first['status']} "
            failure = f"{status}{first['stage']}: {first['test']}: {first['message']}"[:160]
        counts = f"{row['passed']:>3}/{row['in_scope']:<3}"
        lines.append(f"{op:<{width}}  {counts} {row['out_of_scope'] or '':>3}   {failure}")
    rate = summary["pass_rate"]
    lines += [
        "",
        f"cases: {summary['total']}, out of scope: {summary['out_of_scope']}, "
        f"in scope: {summary['in_scope']}, passed: {summary['passed']}"
        + (f" ({100 * rate:.1f}%)" if rate is not None else ""),
        "failures by stage: "
        + (", ".join(f"{k} {v}" for k, v in summary["failures_by_stage"].items()) or "none"),
    ]
    if summary["uncaught_errors"]:
        lines.append(f"uncaught (non-compiler.errors) exceptions: {summary['uncaught_errors']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter", help="regex searched in test names (e.g. '^test_abs$')")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds a case")
    parser.add_argument("--pipeline", default=DEFAULT_PIPELINE, help="passes to build with (O0)")
    parser.add_argument(
        "--runtime-shape-inputs",
        action="store_true",
        help="keep shape-like inputs (Reshape's shape, axes, pads, ...) as graph inputs",
    )
    parser.add_argument("--sample", type=int, help="run every N-th selected case only")
    parser.add_argument("--data", type=Path, help="folders of model.onnx + test_data_set_0")
    parser.add_argument("--scope", type=Path, default=OUT_OF_SCOPE_FILE, help="out-of-scope rules")
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--resume", type=Path, help="reuse results from this earlier --json")
    parser.add_argument("--quiet", action="store_true", help="progress every 100 cases only")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    cases = directory_cases(args.data) if args.data else generated_cases()
    if args.filter:
        pattern = re.compile(args.filter)
        cases = [c for c in cases if pattern.search(c.name)]
    if args.sample and args.sample > 1:
        cases = cases[:: args.sample]
    classify(cases, load_scope_rules(args.scope))
    # Every 8th case first, then the next offset...: an interrupted run's partial report is a
    # sample spread over all ops, not the alphabetically first ones.
    cases = [case for offset in range(SPREAD) for case in cases[offset::SPREAD]]
    reused: list[Result] = []
    if args.resume and args.resume.exists():
        earlier = {c["name"]: c for c in json.loads(args.resume.read_text())["cases"]}
        names = {c.name for c in cases}
        reused = [Result(**earlier[n]) for n in sorted(names & set(earlier))]
        cases = [c for c in cases if c.name not in earlier]

    done = Counter()
    selected = len(cases)
    finished = list(reused)

    def write_report(partial: bool) -> None:
        if not args.json:
            return
        ordered = sorted(finished, key=lambda r: r.name)
        report = {
            "onnx": onnx.__version__,
            "pipeline": args.pipeline,
            "shape_inputs": "runtime" if args.runtime_shape_inputs else "constant",
            "filter": args.filter,
            "sample": args.sample,
            "tolerances": {"rtol": RTOL, "atol": ATOL, "bfloat16_rtol": BF16_RTOL},
            "partial": partial,  # an interrupted run: --resume FILE completes it
            "seconds": time.perf_counter() - started,
            "summary": summarize(ordered),
            "cases": [r.to_json() for r in ordered],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str))
        tmp.replace(args.json)

    def show(result: Result) -> None:
        finished.append(result)
        done[result.status] += 1
        count = sum(done.values())
        if count % 100 == 0:
            write_report(partial=True)
        if args.quiet:
            if count % 100 == 0 or count == selected:
                seconds = time.perf_counter() - started
                print(f"[{count}/{selected}] {seconds:.0f} s, {dict(done)}", flush=True)
        else:
            where = f" [{result.stage}]" if result.stage else ""
            detail = f": {result.message}" if result.status != "passed" else ""
            print(f"{result.status:<12} {result.name}{where}{detail}"[:200], flush=True)

    run_cases(
        cases,
        jobs=args.jobs,
        timeout=args.timeout,
        pipeline=args.pipeline,
        fold_shapes=not args.runtime_shape_inputs,
        on_result=show,
    )
    summary = summarize(sorted(finished, key=lambda r: r.name))
    print(format_table(summary))
    print(f"time: {time.perf_counter() - started:.0f} s with {args.jobs} workers")
    write_report(partial=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
