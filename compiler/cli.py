"""The command line: ``python -m compiler build|run|bench|passes|recipes|inspect|bisect``.

Errors raised on purpose (:class:`~compiler.errors.CompilerError`) print as one line on stderr
and exit non-zero; ``--verbose`` adds the traceback. Long steps show a spinner with the step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from compiler.errors import CompilerError, InputError

EXAMPLE = "gpt2"
EXAMPLE_CONFIG = {"layers": 2, "hidden": 256, "heads": 4, "vocab": 1024, "seq": 32}

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def _progress(title: str) -> Iterator[Any]:
    """A spinner showing the current step; each finished step is printed with its time."""
    state = {"message": None, "start": time.perf_counter()}
    with err.status(title) as status:

        def step(message: str) -> None:
            now = time.perf_counter()
            if state["message"] is not None:
                err.print(
                    f"  [green]✓[/] {state['message']} [dim]({now - state['start']:.1f} s)[/]"
                )
            state["message"], state["start"] = message, now
            status.update(f"{message} …")

        yield step
        if state["message"] is not None:
            elapsed = time.perf_counter() - state["start"]
            err.print(f"  [green]✓[/] {state['message']} [dim]({elapsed:.1f} s)[/]")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _parse_dims(items: Sequence[str] | None) -> dict[str, int]:
    dims: dict[str, int] = {}
    for item in items or []:
        name, _, value = item.partition("=")
        if not value.strip().isdigit():
            raise InputError(f"--dim expects NAME=INT, got {item!r}")
        dims[name.strip()] = int(value)
    return dims


# ---------------------------------------------------------------------------------------- build
def cmd_build(args: argparse.Namespace) -> int:
    from compiler.builder import DEFAULT_TOLERANCE, build

    if args.passes is not None and args.pipeline is not None:
        raise InputError("give either --passes or --pipeline, not both")
    _apply_recipe(args)
    pipeline = args.pipeline or "O1"
    if args.llm:
        return _build_llm(args, pipeline)
    if args.model is None:
        from compiler.examples import make_example

        source: Any
        source, example_inputs, names = make_example(EXAMPLE, **EXAMPLE_CONFIG)
        label = f"the bundled example (GPT-2 from a transformers config: {EXAMPLE_CONFIG})"
        output = Path(args.output or "example-gpt2.artifact")
        kwargs: dict[str, Any] = {
            "example_inputs": example_inputs,
            "input_names": names,
            "output_names": ["logits"],
        }
    else:
        source = Path(args.model)
        label = str(source)
        output = Path(args.output or f"{source.stem}.artifact")
        kwargs = {}
    err.print(f"Building {label} → {output}/")
    with _progress("starting") as step:
        result = build(
            source,
            output,
            target=args.target or "llvm",
            passes=args.passes,
            pipeline=pipeline,
            check_numerics=args.check_numerics,
            dump_dir=args.dump_dir,
            tolerance=args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE,
            max_error=args.max_error,
            metric=args.metric or "max",
            calibration=args.calibration,
            tokenizer=_tokenizer(args.tokenizer),
            dims=_parse_dims(args.dim),
            tuning_db=args.tuning_db,
            progress=step,
            **kwargs,
        )
    _print_report(result.report, result.manifest, result.output_dir)
    return 0


def _apply_recipe(args: argparse.Namespace) -> None:
    """``--recipe``: its passes, and its settings wherever the command line gives none."""
    if args.recipe is None:
        return
    if args.passes is not None or args.pipeline is not None:
        raise InputError("--recipe names the passes: give --recipe or --passes/--pipeline")
    if args.llm:
        raise InputError("--recipe does not apply to --llm builds; use --pipeline")
    from compiler.recipes import load_recipe

    recipe = load_recipe(args.recipe)
    args.passes = recipe.pipeline
    for key in (
        "target", "max_error", "metric", "tolerance", "tuning_db", "calibration", "tokenizer",
    ):  # fmt: skip
        value = getattr(recipe, key)
        if getattr(args, key) is None and value is not None:
            setattr(args, key, str(value) if isinstance(value, Path) else value)
    # --dim NAME=INT given on the command line comes last, so it wins.
    args.dim = [*(f"{k}={v}" for k, v in recipe.dims.items()), *(args.dim or [])]
    err.print(f"recipe {recipe.path}: {recipe.pipeline}")


def _tokenizer(name: str | None) -> Any:
    """A tokenizer from a local folder, or one of the evaluation models' (smollm2, minilm)."""
    if name is None:
        return None
    from compiler import real_models

    if name in ("smollm2", "minilm"):
        return getattr(real_models, f"{name}_tokenizer")()
    import transformers

    if not Path(name).exists():
        raise InputError(f"--tokenizer {name}: no such folder (or use smollm2 / minilm)")
    return transformers.AutoTokenizer.from_pretrained(name, local_files_only=True)


def _build_llm(args: argparse.Namespace, pipeline: str) -> int:
    """``build --llm``: the bundled example as prefill + KV-cache decode (no .onnx input)."""
    from compiler.examples import make_example
    from compiler.llm import build_causal_lm

    if args.model is not None:
        raise InputError(
            "--llm builds the bundled example (a transformers model); from Python, "
            "compiler.llm.build_causal_lm(model, out) takes your own"
        )
    wrapped, _, _ = make_example(EXAMPLE, **EXAMPLE_CONFIG)
    output = Path(args.output or "example-gpt2.llm")
    err.print(f"Building the bundled example as an LLM (prefill + decode) → {output}/")
    with _progress("starting") as step:
        geometry = build_causal_lm(
            wrapped.model,
            output,
            prefill_len=args.prefill_len,
            max_context=args.max_context,
            target=args.target or "llvm",
            pipeline=pipeline,
            progress=step,
        )
    out.print(f"built {output}/: {geometry}")
    return 0


def _print_report(report: dict, manifest: dict, output_dir: Path) -> None:
    table = Table(title="Passes", title_justify="left")
    for col in ("pass", "changed", "nodes", "parameter bytes", "GFLOP", "time"):
        table.add_column(col, justify="left" if col == "pass" else "right")
    first = report["input_model"]
    table.add_row(
        "(input)",
        "",
        str(first["nodes"]),
        _bytes(first["total_parameter_bytes"]),
        f"{first['flops'] / 1e9:.3f}",
        "",
    )
    for entry in report["passes"]:
        after = entry["after"]
        table.add_row(
            entry["name"],
            "yes" if entry["modified"] else "no",
            str(after["nodes"]),
            _bytes(after["total_parameter_bytes"]),
            f"{after['flops'] / 1e9:.3f}",
            f"{entry['seconds'] * 1e3:.0f} ms",
        )
    out.print(table)
    files = Table(title=f"Artifact {output_dir}/", title_justify="left")
    files.add_column("file")
    files.add_column("size", justify="right")
    for name, info in sorted(manifest["files"].items()):
        files.add_row(name, _bytes(info["bytes"]))
    out.print(files)
    target = manifest["target"]
    out.print(f"target: {target.get('kind')} {target.get('mcpu', target.get('arch', ''))}".rstrip())
    ver = report["verification"]
    if ver.get("passed") and "relative_rms" in ver:
        out.print(
            f"verified against onnxruntime: relative RMS error {ver['relative_rms']:.2e} "
            f"(tolerance {ver['tolerance']:.0e}; activations are quantized, so single values may "
            "differ by a quantization step)"
        )
    elif ver.get("passed"):
        out.print(
            f"verified against onnxruntime: max normalized error {ver['max_error']:.2e} "
            f"(tolerance {ver['tolerance']:.0e})"
        )
    else:
        out.print(f"not verified: {ver.get('reason', 'disabled')}")
    _print_accuracy(report.get("accuracy") or {})
    latency = report.get("latency") or {}
    if latency.get("measured"):
        ms = latency["medians_ms"]
        out.print(
            f"latency (median of {latency['runs']} runs): {ms['compiler']:.3f} ms, onnxruntime "
            f"{ms['onnxruntime']:.3f} ms ({latency['ratios_to_onnxruntime']['compiler']:.2f}×); "
            "`compiler bench` measures more carefully"
        )
    tuning = report.get("tuning") or {}
    if tuning.get("database"):
        out.print(
            f"tuning database {tuning['database']}: {tuning['tuned_kernels']} kernels from it"
        )
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in report["timings_seconds"].items())
    out.print(f"timings: {timings}")
    if "report.html" in manifest["files"]:
        out.print(f"report: {output_dir / 'report.html'} (tables and plots)")


def _print_accuracy(accuracy: dict) -> None:
    for record in accuracy.get("passes", []):
        verdict = "ROLLED BACK" if record["rolled_back"] else "kept"
        out.print(
            f"accuracy: {record['pass_name']} error {record['error']:.3g} (vs input model "
            f"{record['total_error']:.3g}, budget {record['budget']:.3g}): {verdict}"
        )
    if "error_vs_input_model" in accuracy:
        out.print(
            f"optimized model vs input model (onnxruntime, {accuracy['inputs']}): normalized "
            f"max error {accuracy['error_vs_input_model']:.3g}, relative RMS "
            f"{accuracy['relative_rms_vs_input_model']:.3g}"
        )
    layers = accuracy.get("layers") or []
    if layers:
        key = "output_error" if layers[0].get("output_error") is not None else "weight_error"
        worst = sorted(layers, key=lambda r: r[key] or 0.0, reverse=True)[:3]
        names = ", ".join(f"{r['node']} {r[key]:.3g}" for r in worst)
        out.print(f"quantized {len(layers)} layers; largest {key.replace('_', ' ')}: {names}")
    blocks = [r for r in accuracy.get("prune", []) if "kept" in r]
    if blocks:
        kept = sum(r["kept"] for r in blocks)
        total = sum(r["features"] for r in blocks)
        out.print(f"pruned {len(blocks)} FFN blocks: {kept} of {total} neurons kept")
    attention = [r for r in accuracy.get("prune", []) if r.get("mode") == "heads"]
    if attention:
        done = [r for r in attention if "heads_kept" in r]
        kept = sum(len(r["heads_kept"]) for r in done)
        line = f"pruned heads in {len(done)} attention blocks: {kept} of "
        line += f"{sum(r['heads'] for r in done)} heads kept"
        skipped = [r for r in attention if "skipped" in r]
        if skipped:
            line += f"; {len(skipped)} blocks skipped (first: {skipped[0]['skipped']})"
        out.print(line)
    sparse = [r for r in accuracy.get("prune", []) if "sparsity" in r]
    if sparse:
        mean = sum(r["sparsity"] for r in sparse) / len(sparse)
        out.print(f"unstructured: {len(sparse)} weights at {mean:.0%} zeros ({sparse[0]['note']})")
    factored = accuracy.get("lowrank", [])
    if factored:
        applied = [r for r in factored if r["applied"]]
        out.print(f"low rank: {len(applied)} of {len(factored)} weights factorized")
    cast = [r for r in accuracy.get("cast", []) if "dtype" in r]
    if cast:
        out.print(f"cast: {len(cast)} weights stored in {cast[0]['dtype']}")


# ------------------------------------------------------------------------------------------ run
def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from compiler.runtime import load

    model = load(args.artifact)
    if args.inputs is None:
        from compiler.bench import seeded_inputs_for

        inputs = seeded_inputs_for(model)
        err.print("no --inputs given: using seeded random inputs")
    else:
        path = Path(args.inputs)
        if not path.is_file():
            raise InputError(f"{path}: no such inputs file")
        try:
            with np.load(path, allow_pickle=False) as data:
                inputs = {name: data[name] for name in data.files}
        except (ValueError, OSError) as e:
            raise InputError(f"{path}: not a readable .npz file without pickles: {e}") from e
    outputs = model(inputs)
    if args.output:
        target = Path(args.output)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".npz", dir=target.parent or "."
        )
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **outputs)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    for name, value in outputs.items():
        out.print(f"{name}: {value.dtype} {list(value.shape)}  mean {float(np.mean(value)):.6g}")
    return 0


# ----------------------------------------------------------------------------------------- tune
def _parse_budget(text: str) -> float:
    """``90``/``90s`` seconds, ``30m`` minutes, ``1h`` hours."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip().lower()
    scale = units.get(text[-1:])
    number = text[:-1] if scale else text
    try:
        value = float(number) * (scale or 1)
    except ValueError as e:
        raise InputError(f"--budget expects a duration like 90s, 30m or 1h, got {text!r}") from e
    if value <= 0:
        raise InputError(f"--budget must be positive, got {text!r}")
    return value


def _rpc_options(args: argparse.Namespace) -> dict:
    """``tune --rpc HOST:PORT --key K [--rpc-workers N]`` as ``tune_model`` keywords."""
    if not args.rpc:
        return {}
    from compiler.rpc import parse_address

    key = Path(args.key_file).read_text().strip() if args.key_file else args.key
    if not key:
        raise InputError("--rpc needs the workers' key: --key K or --key-file FILE")
    return {"rpc": parse_address(args.rpc), "key": key, "rpc_workers": args.rpc_workers}


def cmd_tune(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from backends.tvm.tuning import tune_model
    from compiler.frontends.onnx_file import load_onnx
    from compiler.pass_manager import PassManager
    from compiler.pipeline import build_passes

    budget = _parse_budget(args.budget)
    model = load_onnx(args.model)
    # Tune what `build` compiles: the same pass pipeline first.
    model = PassManager(build_passes(args.pipeline)).run(model).model
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[best]}"),
    )
    with Progress(*columns, console=err) as bar:
        task = bar.add_task("tuning kernels", total=None, best="")

        def step(name: str, index: int, total: int, best_us: float | None) -> None:
            best = f"{name}: {best_us:.1f} µs" if best_us is not None else name
            bar.update(task, completed=index, total=total, best=best)

        result = tune_model(
            model,
            args.db,
            budget_s=budget,
            trials_per_task=args.trials_per_task,
            progress=step,
            **_rpc_options(args),
        )
    out.print(
        f"{result.tasks} kernels: {len(result.tuned)} tuned now, {len(result.skipped)} already "
        f"in {args.db}, in {result.seconds / 60:.1f} min"
        + (f", measured on the RPC workers at {args.rpc}" if args.rpc else "")
        + (" (stopped by the budget; run again to continue)" if result.stopped_by_budget else "")
    )
    for name, us in sorted(result.best_us.items(), key=lambda kv: -kv[1])[:10]:
        out.print(f"  {us:10.1f} µs  {name}")
    return 0


# --------------------------------------------------------------------------------- serve-worker
def cmd_serve_worker(args: argparse.Namespace) -> int:
    from compiler.rpc import parse_address, serve

    key = args.key
    if args.key_file:
        key = Path(args.key_file).read_text().strip()
    if not key:
        raise InputError("serve-worker needs a key: --key K or --key-file FILE")
    tracker = parse_address(args.tracker) if args.tracker else None

    def ready(host: str, port: int) -> None:
        via = f", registered at the tracker {args.tracker}" if tracker else ""
        print(f"listening on {host}:{port}{via}", flush=True)

    serve(
        key,
        host=args.host,
        port=args.port,
        tracker=tracker,
        custom_addr=args.custom_addr,
        on_ready=ready,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    return 0


# ------------------------------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> int:
    from compiler.llm import load_causal_lm

    try:
        prompt = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
    except ValueError as e:
        raise InputError(f"--prompt-ids expects comma-separated integers: {e}") from e
    lm = load_causal_lm(args.artifact)
    start = time.perf_counter()
    tokens = lm.generate(prompt, args.max_new_tokens, eos=args.eos)
    seconds = time.perf_counter() - start
    out.print(",".join(str(t) for t in tokens))
    err.print(f"{len(tokens)} tokens in {seconds:.2f} s ({len(tokens) / seconds:.1f} tokens/s)")
    return 0


# ---------------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from compiler.bench import bench_artifact

    target = Path(args.model)
    with contextlib.ExitStack() as stack:
        if target.is_dir():
            artifact = target
        else:
            from compiler.builder import build

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="compiler-bench-")))
            artifact = tmp / "artifact"
            err.print(f"Building {target} (pipeline {args.pipeline}) for the benchmark")
            with _progress("starting") as step:
                build(target, artifact, pipeline=args.pipeline, progress=step)
        against = tuple(a.strip() for a in args.against.split(",") if a.strip())
        with err.status(f"timing {args.runs} interleaved runs each ({args.threads} threads)"):
            result = bench_artifact(
                artifact, runs=args.runs, warmup=args.warmup, threads=args.threads, against=against
            )
    table = Table(
        title=f"Latency, median of {result.runs} runs, {result.threads} threads",
        title_justify="left",
    )
    table.add_column("runtime")
    table.add_column("median", justify="right")
    table.add_column("× onnxruntime", justify="right")
    for name, ms in result.medians_ms.items():
        ratio = result.ratios.get(name)
        table.add_row(name, f"{ms:.3f} ms", f"{ratio:.2f}" if ratio is not None else "")
    out.print(table)
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0


# --------------------------------------------------------------------------------------- passes
def cmd_passes(args: argparse.Namespace) -> int:
    from compiler.pass_registry import default_registry
    from compiler.pipeline import NAMED_PIPELINES

    registry = default_registry()
    if args.name:
        info = registry.get(args.name)
        out.print(
            f"[bold]{info.name}[/]  ({info.cls.__module__}.{info.cls.__qualname__}, {info.origin})"
        )
        out.print(info.doc)
        for option in info.options.values():
            out.print(f"  {option.name}: {option.type_name} = {option.default!r}")
        return 0
    table = Table(title="Passes", title_justify="left")
    for col in ("name", "options", "from", "summary"):
        table.add_column(col)
    for info in registry:
        options = ", ".join(
            f"{o.name}: {o.type_name} = {o.default!r}" for o in info.options.values()
        )
        table.add_row(info.name, options, info.origin, info.summary)
    out.print(table)
    named = ", ".join(
        f"{name} = {','.join(str(s) for s in fn()) or '(nothing)'}"
        for name, fn in NAMED_PIPELINES.items()
    )
    out.print(f"named pipelines: {named}")
    return 0


# -------------------------------------------------------------------------------------- recipes
def cmd_recipes(args: argparse.Namespace) -> int:
    from compiler.recipes import load_recipe, shipped_recipes

    if args.name:
        recipe = load_recipe(args.name)
        out.print(f"[bold]{recipe.name}[/]  ({recipe.path})")
        out.print(recipe.path.read_text("utf-8").rstrip(), markup=False)
        out.print(f"pipeline: {recipe.pipeline}", markup=False)
        return 0
    table = Table(title="Shipped recipes (build --recipe NAME)", title_justify="left")
    for col in ("name", "target", "passes", "description"):
        table.add_column(col)
    for name, path in shipped_recipes().items():
        recipe = load_recipe(path)
        target = recipe.target if isinstance(recipe.target, str) else str(recipe.target or "")
        table.add_row(name, target or "llvm", recipe.pipeline, recipe.description)
    out.print(table)
    return 0


# -------------------------------------------------------------------------------------- inspect
def cmd_inspect(args: argparse.Namespace) -> int:
    from compiler.artifact import ONNX_FILE, read_manifest
    from compiler.frontends.onnx_file import load_onnx
    from compiler.model_info import model_stats, signature

    path = Path(args.model)
    if args.dump_after is not None and args.passes is None:
        raise InputError("--dump-after names a pass of --passes: give --passes too")
    if args.dump_after is not None and args.output is None:
        raise InputError("--dump-after needs -o FILE.onnx: where to write the model")
    if path.is_dir():
        manifest = read_manifest(path)
        out.print(
            f"artifact {path}/ (target {manifest['target']}, pipeline {manifest.get('pipeline')!r})"
        )
        files = ", ".join(f"{k} {_bytes(v['bytes'])}" for k, v in sorted(manifest["files"].items()))
        out.print(f"files: {files}")
        path = path / ONNX_FILE
    model = load_onnx(path)
    if args.passes is not None:
        model, stage = _run_to_stage(model, args.passes, args.dump_after)
        out.print(f"after {stage}:")
        if args.output is not None:
            _save_stage(model, Path(args.output))
            out.print(f"wrote {args.output} (open it in Netron)")
    inputs, outputs = signature(model)
    stats = model_stats(model)
    io_table = Table(title=f"{path}", title_justify="left")
    for col in ("kind", "name", "dtype", "shape"):
        io_table.add_column(col)
    for kind, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            io_table.add_row(
                kind, spec.name, spec.dtype, str(list(spec.shape) if spec.shape else "?")
            )
    out.print(io_table)
    ops = Table(title=f"Ops ({stats.nodes} nodes)", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in stats.ops.items():
        ops.add_row(op, str(count))
    out.print(ops)
    params = Table(title=f"Parameters ({stats.parameters:,} elements)", title_justify="left")
    params.add_column("dtype")
    params.add_column("bytes", justify="right")
    for dtype, n in stats.parameter_bytes.items():
        params.add_row(dtype, _bytes(n))
    params.add_row("total", _bytes(stats.total_parameter_bytes))
    out.print(params)
    unknown = (
        f" ({stats.flops_unknown} nodes without shapes not counted)" if stats.flops_unknown else ""
    )
    out.print(
        f"estimated compute: {stats.flops / 1e9:.3f} GFLOP per run (MatMul/Gemm/Conv){unknown}"
    )
    from passes.fusion import fusion_coverage

    coverage = fusion_coverage(model)
    if coverage is None:
        out.print("fusion: the fuse pass has not run on this model (pipeline O2 runs it)")
    else:
        fused = ", ".join(f"{rule} ×{n}" for rule, n in coverage["fused"].items() if n) or "none"
        unfused = ", ".join(f"{what}: {n}" for what, n in coverage["unfused"].items()) or "none"
        out.print(f"fusion coverage: fused {fused}; left unfused {unfused}")
    return 0


def _run_to_stage(model: Any, passes: str, dump_after: str | None) -> tuple[Any, str]:
    """Runs ``passes`` (up to and including the pass ``dump_after`` names: a pass name, the
    pass as written, or its 1-based position) with verification; returns the model and a label."""
    from compiler.instruments import VerifyInstrument
    from compiler.pass_manager import PassManager
    from compiler.pipeline import build_passes, parse_pipeline

    specs = parse_pipeline(passes)
    end = len(specs)
    if dump_after is not None:
        matches = [
            i
            for i, spec in enumerate(specs)
            if dump_after in (spec.name, str(spec)) or dump_after == str(i + 1)
        ]
        if not matches:
            listed = ", ".join(str(spec) for spec in specs) or "none"
            raise InputError(f"--dump-after {dump_after!r}: no such pass in --passes ({listed})")
        end = matches[0] + 1
    run = specs[:end]
    model = PassManager(build_passes(run), [VerifyInstrument()]).run(model).model
    label = f"pass {end} of {len(specs)} ({run[-1]})" if run else "no passes"
    return model, label


def _save_stage(model: Any, target: Path) -> None:
    """Writes ``model`` to ``target`` (and ``target.data`` when large) atomically."""
    import shutil

    from backends.onnxruntime.writer import save_model

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for written in save_model(model, tmp / target.name):
            os.replace(written, target.parent / written.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------- bisect
def cmd_bisect(args: argparse.Namespace) -> int:
    from compiler.bisect import bisect, describe

    output = args.output or f"{Path(args.model).stem}.repro.onnx"
    with err.status("running the passes and onnxruntime after each"):
        result = bisect(
            args.model,
            args.passes,
            tolerance=args.tolerance,
            output=output,
            seed=args.seed,
            dims=_parse_dims(args.dim),
        )
    for line in describe(result):
        out.print(line, soft_wrap=True)
    return 0


# ----------------------------------------------------------------------------------------- main
def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m compiler", description="Make neural networks smaller and faster."
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="compile a model into an artifact folder")
    p.add_argument("model", nargs="?", help="an .onnx file (default: the bundled GPT-2 example)")
    p.add_argument("-o", "--output", help="artifact folder (default: <model>.artifact)")
    p.add_argument("--target", help="llvm (this CPU, default) or cuda")
    p.add_argument("--passes", help='text pipeline, e.g. "cleanup,cse"')
    p.add_argument(
        "--recipe",
        help="a recipe file (TOML) or a shipped recipe's name (python -m compiler recipes): "
        "passes, target, budgets, calibration; options given here override its values",
    )
    p.add_argument(
        "--pipeline", help="named pipeline: O0 (nothing), O1 (cleanup, default), O2 (+ fuse)"
    )
    p.add_argument(
        "--max-error",
        type=float,
        help="accuracy budget of each lossy pass (by --metric, vs the model before it); "
        "a pass over it is rolled back",
    )
    p.add_argument(
        "--metric",
        choices=["max", "perplexity"],
        help="what --max-error measures: max (normalized max error of the outputs, default) or "
        "perplexity (a causal LM's relative perplexity increase on the --calibration text)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        help="the artifact's allowed error vs onnxruntime running the optimized model (1e-3)",
    )
    p.add_argument(
        "--calibration", help="calibration inputs: an .npz (one array per input) or a text file"
    )
    p.add_argument(
        "--tokenizer",
        help="for a text --calibration file: a tokenizer folder, or smollm2 / minilm",
    )
    p.add_argument("--check-numerics", action="store_true", help="run onnxruntime after every pass")
    p.add_argument("--dump-dir", help="write the model after every pass into this folder")
    p.add_argument(
        "--dim", action="append", metavar="NAME=INT", help="value of a symbolic dimension"
    )
    p.add_argument("--tuning-db", help="use the records in this tuning database (compiler tune)")
    p.add_argument(
        "--llm", action="store_true", help="build the example as prefill + KV-cache decode"
    )
    p.add_argument("--prefill-len", type=int, default=32, help="with --llm: longest prompt")
    p.add_argument("--max-context", type=int, default=128, help="with --llm: KV cache slots")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("tune", help="tune the model's kernels with MetaSchedule into a database")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--db", required=True, help="tuning database folder (created, or resumed)")
    p.add_argument("--budget", default="30m", help="wall-clock budget: 90s, 30m, 1h")
    p.add_argument("--trials-per-task", type=int, default=64)
    p.add_argument("--pipeline", default="O1", help="the pass pipeline the build will use")
    p.add_argument("--rpc", help="measure on the workers of this TVM RPC tracker, HOST:PORT")
    p.add_argument("--key", help="with --rpc: the workers' key (serve-worker --key)")
    p.add_argument("--key-file", help="with --rpc: read the key from this file")
    p.add_argument("--rpc-workers", type=int, default=1, help="with --rpc: workers used at once")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser(
        "serve-worker", help="serve TVM RPC sessions (remote stages, tuning) to key holders"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=9091, help="port (0: any free one)")
    p.add_argument("--key", help="the shared secret clients must prove (at least 8 characters)")
    p.add_argument("--key-file", help="read the key from this file (keeps it out of `ps`)")
    p.add_argument("--tracker", help="register at this TVM RPC tracker, HOST:PORT")
    p.add_argument("--custom-addr", help="the address the tracker gives clients for this worker")
    p.set_defaults(func=cmd_serve_worker)

    p = sub.add_parser("generate", help="greedy generation with an LLM artifact (build --llm)")
    p.add_argument("artifact")
    p.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--eos", type=int, default=None, help="stop at this token id")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("run", help="run an artifact on inputs from an .npz file")
    p.add_argument("artifact")
    p.add_argument("--inputs", help=".npz with one array per input name (default: seeded random)")
    p.add_argument("-o", "--output", help="write the outputs to this .npz")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="time an artifact (or a model, built first) against peers")
    p.add_argument("model", help="an artifact folder or an .onnx file")
    p.add_argument("--against", default="onnxruntime", help="comma-separated peers (onnxruntime)")
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pipeline", default="O1", help="pipeline when building an .onnx first")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("passes", help="list passes and their options, or describe one")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_passes)

    p = sub.add_parser("recipes", help="list the shipped recipes (build --recipe), or show one")
    p.add_argument("name", nargs="?", help="a shipped recipe's name, or a recipe file")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser(
        "inspect", help="ops, parameter bytes, inputs and outputs of a model or artifact"
    )
    p.add_argument("model")
    p.add_argument("--passes", help="run this text pipeline first and inspect the result")
    p.add_argument(
        "--dump-after", metavar="PASS", help="stop after this pass of --passes (name or position)"
    )
    p.add_argument("-o", "--output", help="with --passes: write the model to this .onnx file")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "bisect", help="find the first pass (and node) whose outputs drift; write a reproducer"
    )
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--passes", required=True, help='text pipeline, e.g. "cleanup,cse"')
    p.add_argument(
        "--tolerance",
        type=float,
        help="normalized max error allowed (default: each pass's declared tolerance, else 1e-5)",
    )
    p.add_argument("-o", "--output", help="reproducer .onnx (default: <model>.repro.onnx)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument(
        "--dim", action="append", metavar="NAME=INT", help="value of a symbolic dimension"
    )
    p.set_defaults(func=cmd_bisect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CompilerError as e:
        if args.verbose:
            traceback.print_exc()
        err.print(f"[bold red]error:[/] {e}", markup=True, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as e:  # a bug: say so, and how to see more
        if args.verbose:
            traceback.print_exc()
        err.print(
            f"[bold red]internal error:[/] {type(e).__name__}: {e} (rerun with --verbose for the "
            "traceback, and please report it)",
            soft_wrap=True,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
