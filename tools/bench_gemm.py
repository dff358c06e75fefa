"""GEMM routes on this CPU: our panel kernel against the BLASes it could have called.

    python tools/bench_gemm.py [--threads 2] [--runs 30] [--json gemm-routes.json]

Times ``C = A · W`` for a constant weight ``W`` on the shapes of a GPT-2 prefill (128 tokens,
hidden 768), as GFLOP/s of the median of ``--runs``. Routes take turns in blocks of runs (3
rounds), a pause before each block: back to back, one library's spinning thread pool takes
the cores the next one needs, and every route measured half its speed or less.

* ``panel``: :func:`backends.tvm.panel_kernels.gemm_func` on weights packed once
  (:mod:`backends.tvm.panel_gemm`, what ``build`` uses);
* ``numpy``: numpy's OpenBLAS (what :mod:`backends.tvm.blas_offload` calls), which packs ``W``
  on every call;
* ``onnxruntime``: a one-node ``MatMul`` model with ``W`` an initializer (MLAS, prepacked);
* ``torch``: ``torch.mm`` (the CPU wheel's MKL/oneDNN).

These are the numbers that chose the route for products on constant weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROUNDS = 3
SHAPES = [  # (M, K, N): GPT-2 QKV, attention out, MLP up, MLP down, a 8192-column head
    (128, 768, 2304),
    (128, 768, 768),
    (128, 768, 3072),
    (128, 3072, 768),
    (128, 768, 8192),
]


def _onnxruntime_matmul(w: np.ndarray, threads: int):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return lambda a: session.run(None, {"a": a})[0]


def _panel_gemm(a: np.ndarray, w: np.ndarray):
    """A callable running the kernel on device copies of ``a`` and the packed ``w``; it returns
    the output tensor (converted only when checked, not when timed)."""
    import tvm

    from backends.tvm.panel_kernels import gemm_func, pack_panels
    from backends.tvm.target import host_target

    k, n = w.shape
    func = gemm_func(k, n).with_attr("global_symbol", "gemm")
    kernel = tvm.compile(tvm.IRModule({"gemm": func}), target=host_target())["gemm"]
    args = [a, pack_panels(w), np.zeros(n, np.float32), np.empty((a.shape[0], n), np.float32)]
    tensors = [tvm.runtime.tensor(x) for x in args]

    def run():
        kernel(*tensors)
        return tensors[-1]

    return run


def _routes(a: np.ndarray, w: np.ndarray, threads: int) -> dict:
    import torch

    out = np.empty((a.shape[0], w.shape[1]), np.float32)
    w_torch, onnxruntime_matmul = torch.from_numpy(w), _onnxruntime_matmul(w, threads)
    return {
        "panel": _panel_gemm(a, w),
        "numpy": lambda: np.matmul(a, w, out=out),
        "onnxruntime": lambda: onnxruntime_matmul(a),
        "torch": lambda: torch.mm(torch.from_numpy(a), w_torch).numpy(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", default="gemm-routes.json")
    args = parser.parse_args()
    for name in ("TVM_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    results = {"threads": args.threads, "runs": args.runs, "python": platform.python_version()}
    results["shapes"] = []
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        routes = _routes(a, w, args.threads)
        expected = a.astype(np.float64) @ w.astype(np.float64)
        errors = {}
        for name, run in routes.items():
            got = np.asarray(run().numpy() if name == "panel" else run())
            errors[name] = float(np.abs(got - expected).max() / np.abs(expected).max())
            for _ in range(3):
                run()
        samples = {name: [] for name in routes}
        for _ in range(ROUNDS):  # blocks per route, so no pool spins into another's block
            for name, run in routes.items():
                time.sleep(0.3)
                run()
                for _ in range(-(-args.runs // ROUNDS)):
                    start = time.perf_counter()
                    run()
                    samples[name].append(time.perf_counter() - start)
        flops = 2 * m * k * n
        gflops = {name: flops / float(np.median(s)) / 1e9 for name, s in samples.items()}
        results["shapes"].append(
            {"m": m, "k": k, "n": n, "gflops": gflops, "max_rel_error": errors}
        )
        print(
            f"{m}x{k}x{n}: " + ", ".join(f"{name} {v:.0f}" for name, v in gflops.items()),
            "GFLOP/s",
            flush=True,
        )
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
