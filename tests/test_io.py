"""Atomic writes: a reader sees the old file or folder, or the new one, never a part or nothing."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

import obce._io
from obce._io import atomic_folder, atomic_open, atomic_write_text, json_value


def test_a_folder_is_replaced_whole_and_a_failure_leaves_the_old_one(tmp_path):
    path = tmp_path / "model"
    with atomic_folder(path) as staging:
        (staging / "weights").write_text("first")
    with pytest.raises(RuntimeError), atomic_folder(path) as staging:
        (staging / "weights").write_text("half")
        raise RuntimeError("failed while writing")
    assert (path / "weights").read_text() == "first"
    with atomic_folder(path) as staging:
        (staging / "weights").write_text("second")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (path / "weights").read_text() == "second"


@pytest.mark.parametrize("stopped_at", [1, 2])  # just after the old folder's move aside, or before the new one's
def test_stopped_between_the_renames_the_old_folder_comes_back(tmp_path, monkeypatch, stopped_at):
    path = tmp_path / "model"
    with atomic_folder(path) as staging:
        (staging / "weights").write_text("first")
    renames = []

    def replace(source, target):
        renames.append(target)
        if len(renames) == 2 and stopped_at == 2:
            raise KeyboardInterrupt
        os.rename(source, target)
        if len(renames) == 1 and stopped_at == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(obce._io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), atomic_folder(path) as staging:
        (staging / "weights").write_text("second")
    monkeypatch.undo()
    assert renames[-1] == path  # moved back
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (path / "weights").read_text() == "first"


def test_a_text_file_is_not_overwritten_unless_asked(tmp_path):
    path = atomic_write_text(tmp_path / "a.json", "1")
    with pytest.raises(FileExistsError):
        atomic_write_text(path, "2")
    atomic_write_text(path, "2", overwrite=True)
    assert path.read_text() == "2" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_names_the_file_asked_for(tmp_path, monkeypatch):
    """Not the temporary file beside it: "[Errno 30] Read-only file system: '.../.settings.json.jiv6i2pl.tmp'"."""
    target = tmp_path / "settings.json"
    full = pytest.raises(OSError, match=r"\[Errno 28\] cannot write .*settings.json: No space left")
    with full as info, atomic_open(target) as f:
        f.write("x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert isinstance(info.value, OSError) and list(tmp_path.iterdir()) == []

    def read_only(**options):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".settings.json.abc123.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError, match=r"cannot write .*settings.json: Read-only file system$"):
        atomic_write_text(target, "x")
    monkeypatch.undo()
    # The subclass of the errno, as open() gives; anything else passes as it is.
    with pytest.raises(PermissionError, match="cannot write"), atomic_open(target):
        raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(ValueError, match="not an OSError"), atomic_open(target):
        raise ValueError("not an OSError")


def test_json_value():
    assert json_value(np.int64(24)) == 24 and json_value(np.arange(2)) == [0, 1]
    assert json_value(Path("a") / "b") == os.path.join("a", "b") and json_value(np.float32(0.5)) == 0.5
