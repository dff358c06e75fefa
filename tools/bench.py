"""Benchmark: our artifacts against onnxruntime and torch on real architectures, in one run.

    python tools/bench.py [--models gpt2,bert,llama,gpt2-decode,gemv] [--runs 15] [--threads 2]
                          [--torch-compile] [--tuning-db DIR] [--json out.json] [--cache DIR]

For each model (transformers configs, random weights, fixed seed): export to ONNX once (cached),
build with ``compiler.build`` (pipeline O1, untuned; with ``--tuning-db`` also a second build
from those tuning records), then time ours, onnxruntime (all graph optimizations on, same thread
count), torch eager (and torch.compile with ``--torch-compile``), interleaved, medians of
``--runs`` each (DESIGN.md §6). ``gpt2-decode`` times one decode step of the LLM artifact;
``gemv`` times fp32, int8 and int4 weight GEMVs alone (:func:`bench_gemv`). The machine's memory
read bandwidth is measured in the same run, on 1 and on ``--threads`` threads; bandwidth shares
are of the larger. Prints medians and ratios to onnxruntime; writes JSON and an SVG chart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = {
    # name: (example architecture, config, output name)
    "gpt2": (
        "gpt2",
        {"layers": 12, "hidden": 768, "heads": 12, "vocab": 50257, "seq": 128},
        "logits",
    ),
    "bert": (
        "bert",
        {"layers": 12, "hidden": 768, "heads": 12, "vocab": 30522, "seq": 128},
        "last_hidden_state",
    ),
    # Llama-style, ~107M parameters: RMSNorm, rotary, grouped-query attention, SwiGLU.
    "llama": (
        "llama",
        {"layers": 12, "hidden": 768, "heads": 12, "kv_heads": 4, "vocab": 16000, "seq": 128},
        "logits",
    ),
    "gpt2-decode": (
        "gpt2",
        {"layers": 12, "hidden": 768, "heads": 12, "vocab": 50257, "seq": 128},
        "logits",
    ),
    "gpt2-small": (
        "gpt2",
        {"layers": 2, "hidden": 256, "heads": 4, "vocab": 1024, "seq": 32},
        "logits",
    ),
}


def memory_bandwidth_gbs(gib: float = 1.0, repeats: int = 5, threads: int = 1) -> float:
    """Read bandwidth: float32 sums over a buffer far larger than the caches, split over
    ``threads`` threads (numpy releases the GIL in reductions); the median GB/s."""
    from concurrent.futures import ThreadPoolExecutor

    array = np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)
    parts = np.array_split(array, threads)
    times = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, parts))
            times.append(time.perf_counter() - start)
    return array.nbytes / statistics.median(times) / 1e9


# The decode GEMVs alone: a chain of [1, K] x [K, K] MatMuls (K = GEMV_K), long enough that
# each variant's weights come to at least GEMV_MIN_BYTES: 8x the 32 MiB L3, so they stream from
# DRAM, and a run lasts 8 ms or more. A run starts after a pause (compiler.bench), and idle cores
# take a while to come back: 64 MiB int4 chains (2-4 ms) measured 1-2 ms slower after the pause
# than back to back, for onnxruntime less; at 285 MB the two took 10-11 ms either way.
GEMV_K = 4096
GEMV_MIN_BYTES = 256 << 20
GEMV_VARIANTS = {
    # name: (bits per weight, pass pipeline); weight-only quantization, activations float32
    # unless accuracy_level=4
    "fp32": (32, "cleanup"),
    "int8": (8, "cleanup,quantize(bits=8,group=128)"),
    "int4": (4, "cleanup,quantize(bits=4,group=128)"),
    # int8 activations (MatMulNBits accuracy_level=4): integer dot products, on both runtimes
    "int8-acc4": (8, "cleanup,quantize(bits=8,group=128,accuracy_level=4)"),
    "int4-acc4": (4, "cleanup,quantize(bits=4,group=128,accuracy_level=4)"),
}


def gemv_layers(bits: int, k: int = GEMV_K, min_bytes: int = GEMV_MIN_BYTES) -> int:
    """How many ``k``² layers of ``bits``-bit weights make at least ``min_bytes``."""
    return -(-min_bytes * 8 // (k * k * bits))


def gemv_chain(k: int = GEMV_K, layers: int = 8, seed: int = 0):
    """``y = x · W_1 · … · W_layers`` with ``x`` ``[1, k]``: one decode step's GEMVs, no rest."""
    import onnx_ir as ir

    rng = np.random.default_rng(seed)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, k]))
    nodes, current, weights = [], x, []
    for i in range(layers):
        w = (rng.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32)
        weight = ir.Value(name=f"w{i}", const_value=ir.tensor(w, name=f"w{i}"))
        weight.shape, weight.dtype = ir.Shape([k, k]), ir.DataType.FLOAT
        weights.append(weight)
        node = ir.node("MatMul", [current, weight], name=f"gemv{i}")
        out = node.outputs[0]
        out.name, out.dtype, out.shape = ("y" if i == layers - 1 else f"h{i}"), x.dtype, x.shape
        nodes.append(node)
        current = node.outputs[0]
    graph = ir.Graph([x], [current], nodes=nodes, initializers=weights, opset_imports={"": 21})
    return ir.Model(graph, ir_version=10)


def bench_gemv(cache: Path, args, bandwidth_gbs: float) -> dict:
    """fp32, int8 and int4 weight GEMVs (chains of :func:`gemv_layers` × ``GEMV_K``²) against
    onnxruntime on the same ONNX model (MatMul, or MatMulNBits for the quantized ones): the
    weight bytes each run reads over its median time, and that as a share of the measured read
    bandwidth."""
    import onnx_ir as ir

    from compiler.artifact import read_manifest
    from compiler.bench import bench_artifact
    from compiler.builder import build

    entry: dict = {"k": GEMV_K, "min_bytes": GEMV_MIN_BYTES, "variants": {}}
    for variant, (bits, passes) in GEMV_VARIANTS.items():
        layers = gemv_layers(bits)
        source = cache / "gemv" / f"chain-{layers}" / "gemv.onnx"
        if not source.exists():
            source.parent.mkdir(parents=True, exist_ok=True)
            ir.save(gemv_chain(layers=layers), source, external_data="gemv.onnx.data")
        artifact = cache / "gemv" / variant
        build(source, artifact, passes=passes, verify=False, latency_runs=0)
        result = bench_artifact(
            artifact,
            runs=args.runs,
            warmup=args.warmup,
            threads=args.threads,
            against=("onnxruntime",),
        )
        weight_bytes = read_manifest(artifact)["files"]["weights.safetensors"]["bytes"]
        gbs = {k: weight_bytes / (v / 1e3) / 1e9 for k, v in result.medians_ms.items()}
        entry["variants"][variant] = {
            "layers": layers,
            "weight_bytes": weight_bytes,
            "read_gbs": gbs,
            "share_of_bandwidth": {k: v / bandwidth_gbs for k, v in gbs.items()},
            **result.to_json(),
        }
        print(
            f"gemv {variant} ({layers} layers): ours {result.medians_ms['compiler']:.2f} ms = "
            f"{gbs['compiler']:.1f} GB/s ({gbs['compiler'] / bandwidth_gbs:.0%} of "
            f"{bandwidth_gbs:.1f}), onnxruntime "
            f"{result.medians_ms['onnxruntime']:.2f} ms = {gbs['onnxruntime']:.1f} GB/s",
            flush=True,
        )
    return entry


def bench_decode(name: str, model, cache: Path, args) -> dict:
    """One decode step (batch 1, a 128-slot KV cache) of our LLM artifact vs onnxruntime.

    Also reports the weight bytes each step reads over its median time, as a share of the
    machine's measured read bandwidth: the decode GEMVs are bandwidth-bound.
    """
    from compiler.artifact import read_manifest
    from compiler.bench import bench_artifact
    from compiler.llm import build_causal_lm

    start = time.perf_counter()
    build_causal_lm(model, cache / name / "llm", prefill_len=16, max_context=128)
    build_seconds = time.perf_counter() - start
    decode = cache / name / "llm" / "decode"
    result = bench_artifact(
        decode, runs=args.runs, warmup=args.warmup, threads=args.threads, against=("onnxruntime",)
    )
    weight_bytes = read_manifest(decode)["files"]["weights.safetensors"]["bytes"]
    ours_gbs = weight_bytes / (result.medians_ms["compiler"] / 1e3) / 1e9
    entry = {
        "build_seconds": build_seconds,
        "weight_bytes": weight_bytes,
        "weights_read_gbs": ours_gbs,
        **result.to_json(),
    }
    ratios = ", ".join(f"{k} {v:.2f}×" for k, v in result.ratios.items())
    medians = ", ".join(f"{k} {v:.2f} ms" for k, v in result.medians_ms.items())
    print(f"{name}: {medians}  (ratios: {ratios}); weights read at {ours_gbs:.1f} GB/s", flush=True)
    return entry


def ratio_chart(results: dict) -> str:
    """A self-contained SVG bar chart: each runtime's latency as a ratio to onnxruntime."""
    entries = {}
    for model, entry in results["models"].items():
        for variant, sub in entry.get("variants", {}).items():  # gemv: one row group per dtype
            entries[f"{model}-{variant}"] = sub
        entries.setdefault(model, entry)
    rows = [
        (model, runtime, ratio)
        for model, entry in entries.items()
        for runtime, ratio in entry.get("ratios_to_onnxruntime", {}).items()
    ]
    colors = {"compiler": "#1f77b4", "onnxruntime": "#7f7f7f", "torch": "#ff7f0e"}
    bar, gap, left, width = 18, 10, 230, 420
    top = max((r for *_, r in rows), default=1.0)
    height = 40 + len(rows) * (bar + 4) + gap * len(entries)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="10" y="20" font-weight="bold">Latency / onnxruntime (lower is better), '
        f"{results['threads']} threads, median of {results['runs']}</text>",
    ]
    y, previous = 34, None
    for model, runtime, ratio in rows:
        if model != previous and previous is not None:
            y += gap
        previous = model
        w = width * ratio / top
        parts.append(f'<text x="10" y="{y + 13}">{model} — {runtime}</text>')
        color = colors.get(runtime, "#2ca02c")
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="{color}"/>')
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + 13}">{ratio:.2f}×</text>')
        y += bar + 4
    x1 = left + width / top
    parts.append(
        f'<line x1="{x1:.1f}" x2="{x1:.1f}" y1="28" y2="{y}" stroke="black" stroke-dasharray="3"/>'
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2,bert,llama,gpt2-decode,gemv")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipeline", default="O1", help="pass pipeline for our builds (O1, O2)")
    parser.add_argument(
        "--torch-compile", action="store_true", help="also time torch.compile (inductor)"
    )
    parser.add_argument(
        "--tuning-db",
        help="a `compiler tune` database: also build and time each model with its records",
    )
    parser.add_argument(
        "--isolated",
        action="store_true",
        help="also time ours and onnxruntime each in fresh processes (no shared thread pools)",
    )
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "compiler-bench"))
    parser.add_argument("--json", default="bench-results.json")
    parser.add_argument("--plot", default="bench-results.svg", help="bar chart of the ratios")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import torch

    from compiler.bench import bench_artifact
    from compiler.builder import build
    from compiler.examples import make_example
    from compiler.frontends.torch_module import load_torch

    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    results: dict = {
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
        "threads": args.threads,
        "runs": args.runs,
        "pipeline": args.pipeline,
        "memory_read_gbs_by_threads": {
            n: memory_bandwidth_gbs(threads=n) for n in sorted({1, args.threads})
        },
        "models": {},
    }
    # The larger of the single- and multi-threaded reads: shares of it are never flattered.
    results["memory_read_gbs"] = max(results["memory_read_gbs_by_threads"].values())
    print(
        "memory read bandwidth: "
        + ", ".join(
            f"{v:.1f} GB/s ({n} threads)" for n, v in results["memory_read_gbs_by_threads"].items()
        ),
        flush=True,
    )
    for name in args.models.split(","):
        if name == "gemv":
            results["models"][name] = bench_gemv(cache, args, results["memory_read_gbs"])
            continue
        arch, config, output = MODELS[name]
        module, inputs, input_names = make_example(arch, **config)
        if name.endswith("-decode"):
            results["models"][name] = bench_decode(name, module.model, cache, args)
            continue
        onnx_path = cache / name / f"{name}.onnx"
        if not onnx_path.exists():
            import onnx_ir as ir

            model = load_torch(module, inputs, input_names=input_names, output_names=[output])
            onnx_path.parent.mkdir(parents=True, exist_ok=True)
            ir.save(model, onnx_path, external_data=f"{name}.onnx.data")
        start = time.perf_counter()
        built = build(onnx_path, cache / name / "artifact", pipeline=args.pipeline)
        build_seconds = time.perf_counter() - start
        extra = {}
        if args.tuning_db:  # the same model built from the tuning records, timed alongside
            from compiler.runtime import load

            tuned_build = build(
                onnx_path, cache / name / "tuned", pipeline=args.pipeline, tuning_db=args.tuning_db
            )
            tuned = load(cache / name / "tuned")
            extra["compiler-tuned"] = tuned
            tuned_kernels = tuned_build.report["tuning"]["tuned_kernels"]
        if args.torch_compile:
            compiled = torch.compile(module)

            def run_compiled(_seeded, compiled=compiled, example=inputs):
                with torch.inference_mode():  # the torch example inputs, as torch eager gets
                    return compiled(*example)

            extra["torch.compile"] = run_compiled
        result = bench_artifact(
            cache / name / "artifact",
            runs=args.runs,
            warmup=args.warmup,
            threads=args.threads,
            against=("onnxruntime", "torch"),
            torch_module=module,
            torch_inputs=inputs,
            extra=extra,
        )
        entry = {
            "config": config,
            "build_seconds": build_seconds,
            "max_error_vs_onnxruntime": built.report["verification"].get("max_error"),
            **result.to_json(),
        }
        if args.isolated:
            from compiler.bench import bench_isolated

            isolated = bench_isolated(cache / name / "artifact", threads=args.threads)
            entry["isolated"] = isolated.to_json()
            print(
                f"{name} (separate processes): "
                + ", ".join(f"{k} {v:.2f} ms" for k, v in isolated.medians_ms.items())
                + f"  (ours {isolated.ratios['compiler']:.2f}× onnxruntime)",
                flush=True,
            )
        if args.tuning_db:
            entry["tuned_kernels_from_database"] = tuned_kernels
        results["models"][name] = entry
        ratios = ", ".join(f"{k} {v:.2f}×" for k, v in result.ratios.items())
        medians = ", ".join(f"{k} {v:.2f} ms" for k, v in result.medians_ms.items())
        print(f"{name}: {medians}  (ratios to onnxruntime: {ratios})", flush=True)
    for entry in results["models"].values():
        if "weights_read_gbs" in entry:
            entry["share_of_bandwidth"] = entry["weights_read_gbs"] / results["memory_read_gbs"]
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    Path(args.plot).write_text(ratio_chart(results))
    print(f"wrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
