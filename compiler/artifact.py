"""The artifact folder: layout, manifest with hashes, and atomic writing.

Layout (DESIGN.md §1.6)::

    out/
      model.so              compiled library (code only)
      weights.safetensors   weights, in the order the compiled ``main`` takes them
      model.onnx[.data]     the optimized ONNX model (runs in onnxruntime)
      report.json           what the build did and measured
      report.html           the same, for people: tables and plots (self-contained, no scripts)
      manifest.json         signature, target, versions, sha256 and size of every other file

This module imports only the standard library: the deployment runtime uses it.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compiler.errors import ArtifactError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LIBRARY_FILE",
    "MANIFEST_FILE",
    "ONNX_FILE",
    "REPORT_FILE",
    "REPORT_HTML_FILE",
    "WEIGHTS_FILE",
    "atomic_directory",
    "read_manifest",
    "sha256_file",
    "write_json",
    "write_manifest",
]

FORMAT = "compiler-artifact"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
LIBRARY_FILE = "model.so"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "model.onnx"
REPORT_FILE = "report.json"
REPORT_HTML_FILE = "report.html"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Writes ``data`` as stable, indented JSON (sorted keys keep builds byte-identical)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Adds the sha256 and size of every file in ``directory`` and writes ``manifest.json``."""
    files = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        # Nested manifests (an LLM folder's sub-artifacts) are hashed like any other file.
        if path.is_file() and rel != MANIFEST_FILE:
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION, "files": files}
    write_json(directory / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(directory: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Reads and (by default) verifies an artifact's manifest against the files on disk.

    Raises :class:`ArtifactError` naming the first missing, resized, modified or added file (a
    file the manifest does not list: the artifact was changed after it was built). The manifest
    is not a signature: whoever edits a file and its hash in the manifest consistently is not
    detected.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: not an artifact folder (no such directory)")
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(f"{directory}: not an artifact folder ({MANIFEST_FILE} is missing)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{manifest_path}: unreadable manifest: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path}: artifact format version {manifest.get('format_version')} is not "
            f"supported by this runtime (expected {FORMAT_VERSION}); rebuild the model"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{manifest_path}: the manifest lists no files")
    if verify:
        for rel, info in sorted(files.items()):
            path = directory / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ArtifactError(f"{manifest_path}: unsafe file name {rel!r} in the manifest")
            if not path.is_file() or path.is_symlink():
                raise ArtifactError(f"{directory}: incomplete artifact, {rel} is missing")
            if path.stat().st_size != info.get("bytes"):
                raise ArtifactError(
                    f"{path}: size {path.stat().st_size} differs from the manifest's "
                    f"{info.get('bytes')}: the artifact was modified or truncated"
                )
            if sha256_file(path) != info.get("sha256"):
                raise ArtifactError(
                    f"{path}: sha256 differs from the manifest: the artifact was modified"
                )
        for folder, subfolders, names in os.walk(directory):  # links are listed, not followed
            for name in sorted(names + [d for d in subfolders if Path(folder, d).is_symlink()]):
                rel = Path(folder, name).relative_to(directory).as_posix()
                if rel != MANIFEST_FILE and rel not in files:
                    raise ArtifactError(
                        f"{directory / rel}: not listed in the manifest: a file was added to the "
                        "artifact after it was built"
                    )
    return manifest


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temporary folder beside ``final``; on success it replaces ``final``.

    On any error (or interruption) the temporary folder is removed and ``final`` is untouched.
    The replacement is one atomic exchange of the two folders where the system has it (Linux
    ``renameat2``), else two renames. A process killed outright (SIGKILL, power loss) leaves its
    temporary folder (``.NAME.tmp-PID-*``) behind, never a partial ``final``; the next write to
    the same place removes the folders of writers that no longer run.
    Refuses to replace a symbolic link, a file, or a non-empty folder that is not an artifact.
    """
    final = Path(final)
    if final.is_symlink():
        raise ArtifactError(f"{final}: is a symbolic link; refusing to write through it")
    if final.exists():
        if not final.is_dir():
            raise ArtifactError(f"{final}: exists and is not a folder; refusing to overwrite it")
        if any(final.iterdir()) and not (final / MANIFEST_FILE).is_file():
            raise ArtifactError(
                f"{final}: exists, is not empty and is not an artifact; refusing to overwrite it"
            )
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(final)
    prefix = f".{final.name}.tmp-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        if not final.exists():
            tmp.rename(final)
        elif _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # it now holds the old artifact
        else:
            old = Path(
                tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=final.parent)
            )
            old.rmdir()
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two folders atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this file system cannot
        return False
    raise OSError(code, os.strerror(code), str(b))


def _remove_abandoned(final: Path) -> None:
    """Removes temporary folders beside ``final`` left by writers that were killed.

    Only folders named as :func:`atomic_directory` names them, whose writer's pid no longer
    runs; a folder of a live writer (a concurrent build) is left alone.
    """
    for kind in ("tmp", "old"):
        for path in final.parent.glob(f".{glob.escape(final.name)}.{kind}-*-*"):
            pid = path.name[len(f".{final.name}.{kind}-") :].split("-", 1)[0]
            live = not pid.isdecimal() or _running(int(pid))
            if not live and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
