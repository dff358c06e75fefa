"""Benchmark: our artifacts against onnxruntime and torch on real architectures, in one run.

    python tools/bench.py [--models gpt2,bert] [--runs 15] [--threads 2] [--json out.json]
                          [--torch-compile] [--cache DIR]

For each model (transformers configs, random weights, fixed seed): export to ONNX once (cached),
build with ``compiler.build`` (pipeline O1, untuned), then time ours, onnxruntime (all graph
optimizations on, same thread count) and torch eager (and torch.compile with --torch-compile),
interleaved, medians of ``--runs`` each (DESIGN.md §6). The machine's memory read bandwidth is
measured in the same run. Prints a table of medians and ratios to onnxruntime; writes JSON.
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


def memory_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
    """Read bandwidth: a float32 sum over a buffer far larger than the caches (median GB/s)."""
    array = np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        array.sum()
        times.append(time.perf_counter() - start)
    return array.nbytes / statistics.median(times) / 1e9


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
    rows = [
        (model, runtime, ratio)
        for model, entry in results["models"].items()
        for runtime, ratio in entry.get("ratios_to_onnxruntime", {}).items()
    ]
    colors = {"compiler": "#1f77b4", "onnxruntime": "#7f7f7f", "torch": "#ff7f0e"}
    bar, gap, left, width = 18, 10, 230, 420
    top = max((r for *_, r in rows), default=1.0)
    height = 40 + len(rows) * (bar + 4) + gap * len(results["models"])
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
    parser.add_argument("--models", default="gpt2,bert,llama,gpt2-decode")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipeline", default="O1", help="pass pipeline for our builds (O1, O2)")
    parser.add_argument("--torch-compile", action="store_true")
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
        "memory_read_gbs": memory_bandwidth_gbs(),
        "models": {},
    }
    print(f"memory read bandwidth: {results['memory_read_gbs']:.1f} GB/s", flush=True)
    for name in args.models.split(","):
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
        result = bench_artifact(
            cache / name / "artifact",
            runs=args.runs,
            warmup=args.warmup,
            threads=args.threads,
            against=("onnxruntime", "torch"),
            torch_module=module,
            torch_inputs=inputs,
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
        if args.torch_compile:
            compiled = torch.compile(module)
            with torch.inference_mode():
                for _ in range(args.warmup):
                    compiled(*inputs)
                times = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    compiled(*inputs)
                    times.append((time.perf_counter() - start) * 1e3)
            entry["torch_compile_ms"] = statistics.median(times)
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
