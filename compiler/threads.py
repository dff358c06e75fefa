"""How many threads the runtimes get: one per physical core of the machine.

TVM's CPU pool, unless told, starts ``hardware_concurrency / 2`` workers on x86 (it assumes
two hardware threads per core): a single worker on a 2-core machine without SMT, half its speed
(measured: an int4 GEMV chain 3.6 ms on 1 worker, 2.2 ms on 2). Onnxruntime's default is one
thread per physical core; this module gives TVM the same. Standard library only: the runtime
imports it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["default_tvm_threads", "physical_cores"]

_CPUS = Path("/sys/devices/system/cpu")


@functools.cache
def physical_cores() -> int:
    """The machine's physical cores (at least 1), as psutil's ``cpu_count(logical=False)``.

    Linux topology files give each online CPU's package and core id; hardware threads of one
    core share them. Not the process's affinity: TVM pins the thread that starts its pool to one
    core, and counting after that would see one. Without those files, every CPU counts.
    """
    cores = set()
    for topology in _CPUS.glob("cpu[0-9]*/topology"):
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            continue
        cores.add((package, core))
    return len(cores) or os.cpu_count() or 1


def default_tvm_threads() -> None:
    """Sizes TVM's pool to :func:`physical_cores` unless ``TVM_NUM_THREADS`` or
    ``OMP_NUM_THREADS`` (which TVM also reads) says otherwise. Takes effect only before TVM's
    pool first starts."""
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(physical_cores())
