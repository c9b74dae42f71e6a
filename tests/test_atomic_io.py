"""Output files are written all or nothing: a full disk leaves no 0-byte or half-written file (issue 13.6)."""

from __future__ import annotations

import errno
import os

import pytest

from edgekit.atomic_io import write_bytes_atomic, write_text_atomic


def test_writes_and_replaces(tmp_path):
    target = tmp_path / "out.json"
    write_text_atomic(target, "[1]\n")
    assert target.read_text() == "[1]\n"
    write_text_atomic(target, "[2]\n")
    assert target.read_text() == "[2]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.parametrize("existing", [None, b"old results\n"])
def test_a_full_disk_leaves_the_old_file_or_none_and_no_temporary(tmp_path, monkeypatch, existing):
    target = tmp_path / "out.json"
    if existing is not None:
        target.write_bytes(existing)
    real_fsync = os.fsync

    def disk_full(fd):  # the write is buffered; the kernel reports ENOSPC when it reaches the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_bytes_atomic(target, b"x" * 100_000)
    monkeypatch.setattr(os, "fsync", real_fsync)
    if existing is None:
        assert not target.exists()
    else:
        assert target.read_bytes() == existing
    assert [p.name for p in tmp_path.iterdir()] == ([] if existing is None else ["out.json"])


def test_an_interrupt_mid_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.json"

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(target, "{}")
    assert list(tmp_path.iterdir()) == []


def test_detect_save_dir_says_when_it_replaces_an_earlier_runs_files(tmp_path, capsys):
    from pathlib import Path

    from edgekit.cli import main

    zoo = Path(__file__).resolve().parents[1] / "edgekit" / "zoo"
    image = sorted((zoo / "images").iterdir())[0]
    args = ["detect", str(zoo / "yolov8.pt"), str(image), "--save-dir", str(tmp_path / "out")]
    assert main(args) == 0
    assert "replaced" not in capsys.readouterr().out
    assert main(args) == 0
    assert "(replaced 1 from an earlier run)" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "out").iterdir()] == [image.with_suffix(".jpg").name]
