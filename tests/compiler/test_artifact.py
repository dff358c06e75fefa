"""Atomic artifact writing and manifest verification."""

from __future__ import annotations

import json

import pytest

from compiler.artifact import MANIFEST_FILE, atomic_directory, read_manifest, write_manifest
from compiler.errors import ArtifactError


def _make(directory):
    (directory / "a.bin").write_bytes(b"abc")
    (directory / "b.txt").write_text("hello")
    return write_manifest(directory, {"name": "x", "target": {"kind": "llvm"}})


def test_manifest_lists_every_file_with_its_hash(tmp_path):
    manifest = _make(tmp_path)
    assert set(manifest["files"]) == {"a.bin", "b.txt"}
    assert read_manifest(tmp_path)["files"]["a.bin"]["bytes"] == 3


def test_tampered_file_is_detected(tmp_path):
    _make(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"abd")
    with pytest.raises(ArtifactError, match=r"a\.bin: sha256 differs"):
        read_manifest(tmp_path)


def test_truncated_and_missing_files_are_detected(tmp_path):
    _make(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"ab")
    with pytest.raises(ArtifactError, match="truncated"):
        read_manifest(tmp_path)
    (tmp_path / "a.bin").unlink()
    with pytest.raises(ArtifactError, match=r"incomplete artifact, a\.bin is missing"):
        read_manifest(tmp_path)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        read_manifest(tmp_path)


def test_unsafe_names_in_a_manifest_are_refused(tmp_path):
    manifest = _make(tmp_path)
    manifest["files"]["../escape"] = {"sha256": "0", "bytes": 0}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="unsafe file name"):
        read_manifest(tmp_path)


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "partial").write_text("half")
        raise RuntimeError("interrupted")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_an_old_artifact(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    _make(final)
    with atomic_directory(final) as tmp:
        (tmp / "new").write_text("new")
        write_manifest(tmp, {"name": "y", "target": {"kind": "llvm"}})
    assert sorted(p.name for p in final.iterdir()) == [MANIFEST_FILE, "new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_directory_refuses_to_overwrite_other_folders_and_links(tmp_path):
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.txt").write_text("do not delete")
    with pytest.raises(ArtifactError, match="not an artifact; refusing"), atomic_directory(other):
        pass
    assert (other / "thesis.txt").read_text() == "do not delete"
    (tmp_path / "link").symlink_to(other)
    with pytest.raises(ArtifactError, match="symbolic link"), atomic_directory(tmp_path / "link"):
        pass
