"""A build killed outright (SIGKILL) leaves no partial artifact, and blocks no later build.

``compiler.artifact.atomic_directory`` writes into ``.NAME.tmp-PID-*`` beside the output and
renames (or atomically exchanges) it into place at the very end. A killed build therefore leaves
at most that temporary folder; the next build to the same output removes it (its writer's pid no
longer runs). The input model is only ever read.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compiler.artifact import read_manifest
from tests.helpers import REPO

pytestmark = pytest.mark.tvm


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*"))


def _start_build(model: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "compiler", "build", str(model), "-o", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_when_writing(model: Path, out: Path, timeout: float = 300) -> None:
    """Starts a build and SIGKILLs it as soon as its temporary folder appears."""
    process = _start_build(model, out)
    deadline = time.monotonic() + timeout
    try:
        while not _temporaries(out):
            if process.poll() is not None:
                pytest.fail(f"the build ended (status {process.returncode}) before it was killed")
            if time.monotonic() > deadline:
                pytest.fail("the build never started writing its artifact")
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL


def _build(model: Path, out: Path) -> None:
    process = _start_build(model, out)
    assert process.wait(timeout=600) == 0


def test_killed_builds_leave_no_partial_output_and_block_nothing(tiny_onnx, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    before = _digest(model)
    out = tmp_path / "out"

    # 1. Killed while writing a new artifact: no output folder, at most a temporary one.
    _kill_when_writing(model, out)
    assert not out.exists(), "a killed build left a (partial) output folder"
    assert _digest(model) == before
    leftovers = _temporaries(out)
    assert all(p.name.startswith(".out.tmp-") for p in leftovers), leftovers

    # 2. The next build succeeds, and removes what the killed one left.
    _build(model, out)
    read_manifest(out)
    assert _temporaries(out) == []
    old = _tree(out)

    # 3. Killed while rebuilding over an existing artifact: the old one is intact.
    _kill_when_writing(model, out)
    assert _tree(out) == old, "a killed rebuild changed the existing artifact"
    read_manifest(out)
    assert _digest(model) == before


def test_a_build_killed_early_leaves_nothing(tiny_onnx, tmp_path):
    """Killed while loading or compiling (before anything is written): no trace at all."""
    model = tmp_path / "model.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    out = tmp_path / "out"
    process = _start_build(model, out)
    time.sleep(1.0)  # importing and loading: the artifact is written only after compiling
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()
    assert _temporaries(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
