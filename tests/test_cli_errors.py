"""Bad command lines end in one `error:` line and a non-zero exit, before any work (issue 13.8)."""

from __future__ import annotations

import pytest

from edgekit.cli import MAX_IMGSZ, MAX_THREADS
from tests.helpers import one_error_line, run_cli

run = run_cli
assert_one_error_line = one_error_line


@pytest.mark.parametrize("args, fragments", [
    (["convert", "x.pt"], ["Missing option '--target'", "edgekit convert --help"]),
    (["detect"], ["Missing argument 'MODEL'", "edgekit detect --help"]),
    (["frobnicate"], ["No such command 'frobnicate'"]),
    (["detect", "m.onnx", "a.jpg", "--conf", "3"], ["--conf", "0<=x<=1"]),
    (["detect", "m.onnx", "a.jpg", "--threads", str(MAX_THREADS + 1)], ["--threads"]),
    (["bench", "art", "--threads", "100000"], ["--threads"]),
    (["convert", "x.pt", "--target", "intel-cpu", "--bogus"], ["No such option '--bogus'"]),
])
def test_click_usage_errors_are_one_error_line(args, fragments, capsys):
    code, out, err = run(args, capsys)
    assert_one_error_line(code, err, *fragments)
    assert out == ""


def test_huge_imgsz_is_refused_before_loading_anything(tmp_path, capsys):
    code, _, err = run(["export", tmp_path / "missing.pt", "--imgsz", MAX_IMGSZ + 32], capsys)
    assert_one_error_line(code, err, "--imgsz", f"at most {MAX_IMGSZ}")


def test_unknown_backend_name_is_an_error_not_skipped(tmp_path, capsys):
    code, _, err = run(["bench", tmp_path, "--backends", "onnxruntime,openvnio"], capsys)
    assert_one_error_line(code, err, "unknown backend 'openvnio'")
