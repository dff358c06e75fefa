"""How many threads the runtimes get (compiler/threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from compiler import threads


def _topology(root, cpus: dict[int, tuple[int, int]]) -> None:
    for cpu, (package, core) in cpus.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n")
        (folder / "core_id").write_text(f"{core}\n")


@pytest.fixture
def fake_sysfs(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "_CPUS", tmp_path)
    threads.physical_cores.cache_clear()
    yield tmp_path
    threads.physical_cores.cache_clear()


def test_hardware_threads_of_one_core_count_once(fake_sysfs):
    # two sockets; cpu0/cpu1 and cpu2/cpu3 are SMT siblings, core 0 exists in both sockets
    _topology(fake_sysfs, {0: (0, 0), 1: (0, 0), 2: (0, 1), 3: (0, 1), 4: (1, 0)})
    (fake_sysfs / "cpufreq").mkdir()  # not a CPU
    assert threads.physical_cores() == 3


def test_without_topology_files_every_cpu_counts(fake_sysfs):
    assert threads.physical_cores() == (os.cpu_count() or 1)


def test_tvm_threads_default_to_the_physical_cores(monkeypatch):
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads.default_tvm_threads()
    assert os.environ["TVM_NUM_THREADS"] == str(threads.physical_cores())


@pytest.mark.parametrize("variable", ["TVM_NUM_THREADS", "OMP_NUM_THREADS"])
def test_a_thread_count_the_user_set_wins(monkeypatch, variable):
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv(variable, "3")
    threads.default_tvm_threads()
    assert os.environ.get("TVM_NUM_THREADS", "3") == "3"
    assert variable != "OMP_NUM_THREADS" or "TVM_NUM_THREADS" not in os.environ


def test_the_runtime_starts_tvm_with_one_worker_per_core():
    """TVM alone would start hardware_concurrency / 2 workers: 1 on this 2-core machine."""
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    code = (
        "import compiler.runtime, tvm, tvm_ffi\n"
        "print(tvm_ffi.get_global_func('runtime.NumThreads')())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(out.stdout.strip()) == threads.physical_cores()
