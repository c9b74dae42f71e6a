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


@pytest.mark.parametrize("args, fragments", [
    (["convert", "{zoo}", "--target", "onnxruntime-cpu", "--precision", "int8", "--calib-method", "mse",
      "--percentile", "50"], ["--percentile applies to --calib-method percentile (the method here is mse)"]),
    (["convert", "{zoo}", "--target", "onnxruntime-cpu", "--precision", "int8", "--drift-data", "{tmp}"],
     ["--drift-data is the dataset --drift-budget judges on"]),
    (["convert", "{zoo}", "--target", "onnxruntime-cpu", "--precision", "int8", "--drift-budget", "1",
      "--drift-data", "{tmp}/nowhere"], ["nowhere does not exist"]),
    (["convert", "{onnx}", "--target", "onnxruntime-cpu", "--opset", "19"], ["--opset applies when exporting"]),
    (["export", "{zoo}", "--end2end"], ["--end2end/--no-end2end applies to an Ultralytics / YOLOv5 checkpoint"]),
    (["export", "{zoo}", "--trust-upstream", "numpy"], ["--trust-upstream applies to an Ultralytics"]),
    (["bench", "{tmp}", "--mode", "throughput", "--warmup", "50"], ["--warmup applies to --mode latency"]),
    (["convert", "{zoo}", "--target", "onnxruntime-cpu", "--precision", "int8", "--calib-images", "5"],
     ["found 5 readable images", "need at least 16 (or --force-calib)"]),
    (["bench", "{tmp}", "--mode", "throughput", "--video", "{onnx}"], ["model.onnx: expected a video file"]),
])
def test_options_that_would_be_ignored_are_refused_before_any_work(args, fragments, tmp_path, capsys):
    """Each ran with exit 0 and the option silently ignored (a hostile review, session 12): --percentile with
    another method, --drift-data without a budget (a missing dataset found only after export and calibration),
    --opset on an ONNX input, --end2end / --trust-upstream on an edgekit checkpoint, --warmup with throughput."""
    from tests.conftest import ZOO_DIR

    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"")
    filled = [str(a).format(zoo=ZOO_DIR / "yolov8.pt", tmp=tmp_path, onnx=onnx_file) for a in args]
    out = tmp_path / "out"
    code, stdout, err = run_cli([*filled, *(["-o", out] if filled[0] in ("convert", "export") else [])], capsys)
    one_error_line(code, err, *fragments)
    assert not out.exists()


def test_output_folder_below_a_file_is_one_clear_line(tmp_path, capsys):
    """`convert … -o afile/sub` said "…/afile: cannot write the artifact there (File exists)" (a hostile review)."""
    from tests.conftest import ZOO_DIR

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, _, err = run_cli(["convert", ZOO_DIR / "yolov8.pt", "--target", "onnxruntime-cpu", "-o", blocker / "sub"],
                           capsys)
    one_error_line(code, err, f"-o {blocker / 'sub'}: {blocker} is a file, so nothing can be written below it")
