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


def test_atomic_path_for_a_library_that_writes_the_file_itself(tmp_path):
    from edgekit.atomic_io import atomic_path

    target = tmp_path / "model.onnx"
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".model.onnx.")
        temporary.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("the exporter failed")
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_folder_swap_fsyncs_every_file_before_the_rename(tmp_path, monkeypatch):
    """An artifact or report published by rename must not hold 0-byte files after a crash: every staged
    file reaches the disk (fsync) before the folder is renamed into place."""
    import edgekit.atomic_io as atomic_io

    out = tmp_path / "art"
    staging = atomic_io.make_staging_dir(out)
    (staging / "sub").mkdir()
    for name in ("model.onnx", "sub/model.bin", "edgekit.json"):
        (staging / name).write_bytes(b"x")
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append("fsync " + os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst):
        events.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    assert atomic_io.swap_into_place(staging, out) == "new"
    before = events[:events.index("rename")]
    assert {"fsync model.onnx", "fsync model.bin", "fsync edgekit.json"} <= set(before), events
    assert (out / "sub" / "model.bin").read_bytes() == b"x"
