#!/usr/bin/env bash
# GPU check, in one go on a CUDA machine (an H200 when one is lent): set up, build the bundled
# example and BERT for --target cuda, run them on the GPU through compiler.runtime, compare with
# onnxruntime on the CPU, and time them. Writes $OUT/gpu_check.json when OUT is set.
#
#   bash tools/gpu_check.sh            # needs nvidia-smi, a CUDA driver and Python 3.11
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
export PYTHONUNBUFFERED=1
.venv/bin/python - <<'PY'
import json, os, statistics, tempfile, time
from pathlib import Path

import numpy as np

from backends.onnxruntime.reference import run_reference
from compiler.builder import build
from compiler.examples import export_onnx
from compiler.numerics import max_error, random_inputs
from compiler.runtime import load

results = {}
work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
for name, config in {
    "gpt2-small": ("gpt2", {}),
    "bert-base": ("bert", {"layers": 12, "hidden": 768, "heads": 12, "vocab": 30522, "seq": 128}),
}.items():
    arch, cfg = config
    onnx_path = export_onnx(arch, work / name / f"{name}.onnx", **cfg)
    start = time.perf_counter()
    build(onnx_path, work / name / "cuda", target="cuda")
    build_s = time.perf_counter() - start
    model = load(work / name / "cuda", device="cuda")
    inputs = random_inputs(
        [(s["name"], np.dtype(s["dtype"]), s["shape"]) for s in model.inputs], seed=0
    )
    outputs = model(inputs)
    errors = max_error(outputs, run_reference(onnx_path, inputs))
    for _ in range(5):
        model(inputs)
    times = []
    for _ in range(30):
        start = time.perf_counter()
        model(inputs)
        times.append((time.perf_counter() - start) * 1e3)
    results[name] = {
        "build_seconds": build_s,
        "max_error_vs_onnxruntime_cpu": max(errors.values()),
        "median_ms_including_host_copies": statistics.median(times),
    }
    print(name, results[name], flush=True)
out = os.environ.get("OUT")
if out:
    Path(out, "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
PY
