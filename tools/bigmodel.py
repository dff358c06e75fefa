"""Peak memory of a build of an ONNX model larger than 2 GiB (external data).

    python tools/bigmodel.py [--gib 2.25] [--hidden 4096] [--keep DIR] [--json FILE]

Writes a model of ``--gib`` GiB of float32 weights — a stack of ``hidden × hidden`` MatMul layers
with a ReLU between, saved with external data (a single protobuf cannot exceed 2 GiB) — then runs
``python -m compiler build`` on it in a subprocess, sampling the build's resident set size (VmRSS,
which counts memory-mapped weight pages once they are read) every 50 ms together with the build
step it is in. Prints the peak, the peak's step, and the peak as a multiple of the weights' size
(the acceptance: ≤ 1.5×); writes the timeline as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_model(folder: Path, gib: float, hidden: int, seed: int = 0) -> tuple[Path, int]:
    """``y = relu(…relu(x·W₀)…)·W_{L−1}`` with ``L`` layers of ``hidden²`` float32 weights."""
    import onnx_ir as ir

    layers = max(1, round(gib * 2**30 / (hidden * hidden * 4)))
    rng = np.random.default_rng(seed)
    x = ir.Value(name="x", shape=ir.Shape([1, hidden]), type=ir.TensorType(ir.DataType.FLOAT))
    nodes, inits, current = [], [], x
    for i in range(layers):
        weight = (rng.standard_normal((hidden, hidden), np.float32) / np.sqrt(hidden)).astype(
            np.float32
        )
        w = ir.Value(name=f"w{i}", const_value=ir.tensor(weight, name=f"w{i}"))
        w.shape, w.dtype = ir.Shape(weight.shape), ir.DataType.FLOAT
        inits.append(w)
        matmul = ir.node("MatMul", [current, w], name=f"layer{i}")
        nodes.append(matmul)
        current = matmul.outputs[0]
        if i + 1 < layers:
            relu = ir.node("Relu", [current], name=f"relu{i}")
            nodes.append(relu)
            current = relu.outputs[0]
    current.name = "y"
    current.shape, current.dtype = ir.Shape([1, hidden]), ir.DataType.FLOAT
    graph = ir.Graph([x], [current], nodes=nodes, initializers=inits, opset_imports={"": 18})
    path = folder / "big.onnx"
    ir.save(ir.Model(graph, ir_version=10), path, external_data="big.onnx.data")
    return path, layers * hidden * hidden * 4


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure_build(model: Path, output: Path, extra: list[str]) -> dict:
    """Runs the build, sampling its RSS; returns peak, the step at the peak and the timeline."""
    command = [sys.executable, "-m", "compiler", "build", str(model), "-o", str(output), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    step = ["starting"]
    log: list[str] = []

    def read_steps() -> None:
        for line in process.stderr:
            log.append(line.rstrip())
            if line.strip():
                step[0] = "after: " + line.strip().lstrip("✓ ")[:100]

    reader = threading.Thread(target=read_steps, daemon=True)
    reader.start()
    timeline: list[tuple[float, int, str]] = []
    start = time.perf_counter()
    while process.poll() is None:
        timeline.append((time.perf_counter() - start, _rss_kib(process.pid), step[0]))
        time.sleep(0.05)
    stdout = process.stdout.read()
    reader.join(timeout=5)
    if process.returncode != 0:
        raise SystemExit(f"build failed ({process.returncode}):\n" + "\n".join(log[-20:]))
    peak = max(timeline, key=lambda t: t[1])
    return {
        "command": " ".join(command),
        "seconds": time.perf_counter() - start,
        "peak_rss_bytes": peak[1] * 1024,
        "peak_at_seconds": peak[0],
        "peak_step": peak[2],
        "timeline": [{"t": t, "rss_bytes": r * 1024, "step": s} for t, r, s in timeline[::10]],
        "stdout_tail": stdout.splitlines()[-15:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.25, help="weights to generate, in GiB")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--keep", help="write the model and artifact here (default: a temp dir)")
    parser.add_argument("--json", help="write the measurement here")
    parser.add_argument("build_args", nargs="*", help="extra build options (after --)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="compiler-big-") as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"writing a {args.gib} GiB model into {folder} …", file=sys.stderr)
        model, weight_bytes = make_model(folder, args.gib, args.hidden)
        result = measure_build(model, folder / "big.artifact", args.build_args)
    result["weight_bytes"] = weight_bytes
    result["peak_over_weights"] = result["peak_rss_bytes"] / weight_bytes
    print(
        f"weights {weight_bytes / 2**30:.2f} GiB; build peak RSS "
        f"{result['peak_rss_bytes'] / 2**30:.2f} GiB = {result['peak_over_weights']:.2f}× the "
        f"weights, at {result['peak_at_seconds']:.1f} s ({result['peak_step']}); "
        f"build {result['seconds']:.0f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
