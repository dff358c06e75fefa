"""RPC workers (``serve-worker``) behind a real TVM tracker on loopback: key checks, remote
stages. Every process started here is torn down (process groups, killed after a timeout)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import compiler.runtime
from compiler.builder import build
from compiler.rpc import (
    RemotePipeline,
    RpcError,
    auth_token,
    check_token,
    connect,
    public_label,
    request,
)
from tests.helpers import REPO, run_cli
from tests.passes.test_partition import mlp

pytestmark = pytest.mark.tvm
KEY = "test-secret-0123"


def test_tokens():
    seen: dict[str, float] = {}
    token = auth_token(KEY, "m")
    assert check_token("other-key-000", "m", token, seen) == "wrong key"
    assert check_token(KEY, "other-match", token, seen) == "wrong key"
    assert check_token(KEY, "m", token, seen) is None
    assert check_token(KEY, "m", token, seen) == "replayed proof"
    assert check_token(KEY, "m", auth_token(KEY, "m", now=time.time() - 600), {}) == "expired proof"
    assert check_token(KEY, "m", "garbage", {}) == "malformed proof"
    assert KEY not in public_label(KEY)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # the worker and its session processes
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _worker(*args: str) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "compiler", "serve-worker", "--port", "0", "--key", KEY, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    line = process.stdout.readline()  # "listening on HOST:PORT ..."
    if not line.startswith("listening on"):
        _stop(process)
        raise RuntimeError(f"the worker did not start: {line!r}")
    return process, int(line.split()[2].rsplit(":", 1)[1].rstrip(","))


@pytest.fixture(scope="module")
def cluster():
    """A TVM tracker and two workers registered at it, on loopback."""
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    workers = []
    try:
        for _ in range(2):
            workers.append(_worker("--tracker", f"127.0.0.1:{tracker.port}"))
        yield tracker, workers
    finally:
        for process, _ in workers:
            _stop(process)
        tracker.terminate()


def test_clients_without_the_key_are_refused(cluster):
    import tvm

    tracker, workers = cluster
    _, port = workers[0]
    # Direct, TVM's own client with the public label as its key: no proof, refused.
    with pytest.raises(Exception, match="mismatch|matches key"):
        tvm.rpc.connect("127.0.0.1", port, key=public_label(KEY))
    with pytest.raises(RpcError, match="refused"):
        connect("127.0.0.1", port, "wrong-key-0000")
    # Through the tracker: TVM's client gets a match key but has no proof.
    with pytest.raises(Exception, match="cannot find server|mismatch"):
        tvm.rpc.connect_tracker("127.0.0.1", tracker.port).request(public_label(KEY), max_retry=1)
    # Another key's label has no workers: refused after the timeout.
    with pytest.raises(RpcError, match="no RPC worker"):
        request("127.0.0.1", tracker.port, "wrong-key-0000", timeout=2)


def test_remote_stages_through_the_tracker(cluster, tmp_path):
    tracker, _ = cluster
    model = mlp(4, width=32)
    build(model, tmp_path / "whole", latency_runs=0)
    build(model, tmp_path / "staged", passes="partition(stages=2)", latency_runs=0)
    reference = compiler.runtime.load(tmp_path / "whole")
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((4, 32)).astype(np.float32)} for _ in range(4)]
    pipeline = RemotePipeline.from_tracker(
        tmp_path / "staged", ("127.0.0.1", tracker.port), KEY, timeout=30
    )
    outputs = pipeline.run_many(feeds)
    for inputs, out in zip(feeds, outputs, strict=True):
        np.testing.assert_allclose(out["y"], reference(inputs)["y"], rtol=1e-6)


def test_serve_worker_requires_a_key():
    result = run_cli("serve-worker", "--port", "0", timeout=120)
    assert result.returncode != 0
    assert "needs a key" in result.stderr
    result = run_cli("serve-worker", "--port", "0", "--key", "short", timeout=120)
    assert result.returncode != 0 and "at least 8 characters" in result.stderr


@pytest.mark.slow
def test_tuning_measures_on_the_rpc_workers(cluster, tmp_path):
    """``tune --rpc``: MetaSchedule's RPC runner on the tracker's workers fills the database
    that ``build --tuning-db`` reads (slow: MetaSchedule's fixed cost per task)."""
    import onnx_ir as ir

    from backends.tvm.tuning import tune_model
    from compiler.pass_manager import PassManager
    from compiler.pipeline import build_passes

    tracker, _ = cluster
    model = mlp(2, width=32)
    path = tmp_path / "mlp.onnx"
    ir.save(model, path)
    # what `build` compiles (O1's passes first), as `compiler tune --pipeline O1` tunes it
    result = tune_model(
        PassManager(build_passes("O1")).run(model).model,
        tmp_path / "db",
        budget_s=300,
        trials_per_task=4,
        rpc=("127.0.0.1", tracker.port),
        key=KEY,
    )
    assert result.runner == f"rpc://127.0.0.1:{tracker.port}" and result.tuned
    assert result.best_us  # measured: the workers ran the candidates
    built = build(path, tmp_path / "out", tuning_db=tmp_path / "db", latency_runs=0)
    assert built.report["tuning"]["tuned_kernels"] >= 1
