"""Shared file helpers: hashing and crash-safe writes."""

from __future__ import annotations

import stat

import pytest

from hear_mwmae.files import atomic_write, sha256_file


def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert sha256_file(path, chunk=2) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_atomic_write_replaces_whole_file_with_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "x.txt"
    with atomic_write(path, "w") as fh:
        fh.write("new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # readable by others, not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["x.txt"]


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as fh:
            fh.write(b"half")
            raise RuntimeError("crash while writing")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
