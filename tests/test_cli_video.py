"""`edgekit detect` on a video file, a local HTTP MJPEG stream and bad video sources.

Oracle: the Detector's single-image path on each decoded frame (the frames of a lossless FFV1 video are the
written ones, bit for bit). The model is the real FastestDet ONNX file with --family/--names.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from tests.helpers import one_error_line, run_cli
from tests.video_helpers import mjpeg_server, truncate, video_frames, write_video

COUNT = 8


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return video_frames(COUNT, (176, 128))


@pytest.fixture(scope="module")
def video(frames, tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("cli-video") / "clip.avi", frames, fps=12.0)


@pytest.fixture(scope="module")
def model_args(fastestdet_dir):
    return [fastestdet_dir / "FastestDet.onnx"], ["--family", "fastestdet", "--names", fastestdet_dir / "coco.names"]


@pytest.fixture(scope="module")
def single_image(fastestdet_dir):
    """The Detector's single-image path, for the oracle."""
    from edgekit.models.fastestdet import fastestdet_spec
    from edgekit.runtime.detector import Detector
    from edgekit.spec import load_class_names

    spec = fastestdet_spec(load_class_names(fastestdet_dir / "coco.names"))
    with Detector.from_third_party_onnx(fastestdet_dir / "FastestDet.onnx", spec) as detector:
        yield detector


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_record_matches(record, detections, names):
    assert record["labels"] == detections.labels.tolist()
    assert record["names"] == [names[i] for i in detections.labels.tolist()]
    np.testing.assert_allclose(np.array(record["boxes"]).reshape(-1, 4), detections.boxes, rtol=0, atol=2e-3)
    np.testing.assert_allclose(record["scores"], detections.scores, rtol=0, atol=2e-6)


@pytest.mark.parametrize("mode", ["latency", "throughput"])
def test_video_gives_json_lines_per_frame_and_the_annotated_video(mode, video, frames, model_args, single_image,
                                                                  tmp_path, capsys):
    model, options = model_args
    out_json, out_dir = tmp_path / "clip.jsonl", tmp_path / "drawn"
    code, out, err = run_cli(["detect", *model, video, *options, "--json", out_json, "--save-dir", out_dir,
                              "--mode", mode], capsys)
    assert code == 0, err
    records = read_jsonl(out_json)
    assert [r["index"] for r in records] == list(range(COUNT))  # every frame once, in order
    assert [r["timestamp"] for r in records] == pytest.approx([i / 12.0 for i in range(COUNT)], abs=1e-6)
    for record, written in zip(records, frames):
        assert_record_matches(record, single_image.detect(written, color_order="BGR"), single_image.spec.class_names)
    assert sum(len(r["labels"]) for r in records) > 0
    assert f"{COUNT} frames" in out and f"[{mode}," in out and f"wrote {COUNT} frames to {out_json}" in out
    drawn = cv2.VideoCapture(str(out_dir / "clip.mp4"))
    assert drawn.get(cv2.CAP_PROP_FRAME_COUNT) == COUNT and drawn.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    assert (drawn.get(cv2.CAP_PROP_FRAME_WIDTH), drawn.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (176, 128)
    drawn.release()
    assert not list(tmp_path.rglob(".*partial*")), "no temporary file is left behind"
    assert "\r" not in err  # no live line when stderr is not a terminal


def test_truncated_video_warns_and_keeps_its_frames(video, model_args, tmp_path, capsys):
    model, options = model_args
    cut = truncate(video, tmp_path / "cut.avi", 0.5)
    code, out, err = run_cli(["detect", *model, cut, *options, "--json", tmp_path / "cut.jsonl"], capsys)
    assert code == 0, err
    records = read_jsonl(tmp_path / "cut.jsonl")
    assert 0 < len(records) < COUNT and [r["index"] for r in records] == list(range(len(records)))
    assert f"warning: {cut}: ended after {len(records)} of the {COUNT} frames" in err


def test_stream_through_the_cli_writes_json_lines(frames, model_args, tmp_path, capsys):
    model, options = model_args
    with mjpeg_server(frames, interval=0.02) as server:
        code, out, err = run_cli(["detect", *model, server.url, *options, "--json", tmp_path / "s.jsonl",
                                  "--save-dir", tmp_path / "drawn"], capsys)
    assert code == 0, err
    indices = [r["index"] for r in read_jsonl(tmp_path / "s.jsonl")]
    assert indices == sorted(indices) and len(set(indices)) == len(indices) and indices
    assert "[latency, 1 request]" in out  # the default for live sources
    assert f"note: {server.url}: the stream ended after {COUNT} frames" in out
    assert (tmp_path / "drawn" / "stream.mp4").is_file()


def test_stalled_stream_keeps_the_frames_before_it_and_says_why(frames, model_args, tmp_path, capsys):
    model, options = model_args
    with mjpeg_server(frames[:3], interval=0.01, stall=True) as server:
        code, out, err = run_cli(["detect", *model, server.url, *options, "--json", tmp_path / "s.jsonl",
                                  "--timeout", "1"], capsys)
    one_error_line(code, err, server.url, "no new frame for 1 s (the stream stalled)")
    assert 1 <= len(read_jsonl(tmp_path / "s.jsonl")) <= 3


@pytest.mark.parametrize("case", ["camera", "device", "missing", "truncated-mp4", "unreachable", "mixed"])
def test_bad_video_sources_are_one_error_line_and_write_nothing(case, frames, video, model_args, tmp_path, capsys):
    model, options = model_args
    if case == "truncated-mp4":
        mp4 = write_video(tmp_path / "clip.mp4", frames, fourcc="mp4v")
        sources, fragments = [truncate(mp4, tmp_path / "cut.mp4", 0.5)], ["cut.mp4: cannot open this video file"]
    else:
        sources, fragments = {
            "camera": (["3"], ["camera 3: no such camera (/dev/video3 does not exist)"]),
            "device": (["/dev/video7"], ["/dev/video7: no such camera"]),
            "missing": ([tmp_path / "nope.mp4"], ["nope.mp4: no such video file"]),
            "unreachable": (["rtsp://127.0.0.1:1/live"], ["rtsp://127.0.0.1:1/live: cannot open the stream"]),
            "mixed": ([video, video], ["one video file, camera or stream at a time"]),
        }[case]
    out_json = tmp_path / "out.jsonl"
    code, out, err = run_cli(["detect", *model, *sources, *options, "--json", out_json, "--save-dir",
                              tmp_path / "drawn", "--timeout", "2"], capsys)
    one_error_line(code, err, *fragments)
    assert not out_json.exists() and not (tmp_path / "drawn").exists()


def test_bad_mode_is_one_error_line(video, model_args, capsys):
    model, options = model_args
    code, out, err = run_cli(["detect", *model, video, *options, "--mode", "fast"], capsys)
    one_error_line(code, err, "--mode")


def test_images_still_give_coco_results_in_throughput_mode(fastestdet_dir, model_args, tmp_path, capsys):
    model, options = model_args
    images = sorted((fastestdet_dir / "images").glob("*.jpg"))[:2]
    results = {}
    for mode in ("latency", "throughput"):
        code, out, err = run_cli(["detect", *model, *images, *options, "--json", tmp_path / f"{mode}.json",
                                  "--mode", mode], capsys)
        assert code == 0, err
        results[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
    assert results["latency"] == results["throughput"] and results["latency"]
    assert {r["file_name"] for r in results["latency"]} <= {p.name for p in images}


def test_bench_throughput_reports_end_to_end_next_to_raw(video, tmp_path, capsys):
    from tests.helpers import fastestdet_like_artifact

    artifact = fastestdet_like_artifact(tmp_path / "artifact")
    code, out, err = run_cli(["bench", artifact, "--mode", "throughput", "--video", video, "--runs", "1",
                              "--workers", "2", "--threads", "1", "--json", tmp_path / "b.json"], capsys)
    assert code == 0, err
    [result] = json.loads((tmp_path / "b.json").read_text())
    assert result["name"] == "onnxruntime/fp32" and result["workers"] == 2 and result["frames"] == COUNT
    assert result["raw_fps"] > 0 and result["end_to_end_fps"] > 0
    assert result["ratio"] == pytest.approx(result["end_to_end_fps"] / result["raw_fps"])
    assert "| onnxruntime/fp32 | 2 |" in out
    code, out, err = run_cli(["bench", artifact, "--mode", "throughput", "--report", tmp_path / "r"], capsys)
    one_error_line(code, err, "--report and --image apply to --mode latency")
    code, out, err = run_cli(["bench", artifact, "--video", video], capsys)
    one_error_line(code, err, "--video and --workers apply to --mode throughput")


def test_outputs_that_would_replace_an_input_or_each_other_are_refused(video, model_args, tmp_path, capsys):
    """Each wrote over the input video, or lost the JSON Lines under the annotated video, with exit 0 (or left
    .partial debris behind an 'unexpected IsADirectoryError'); now one error line before any work."""
    import shutil

    model, family = model_args
    source = shutil.copy(video, tmp_path / "clip.mp4")
    before = source.read_bytes()
    cases = [
        (["--json", source], "--json", "would overwrite the input"),
        (["--save-dir", tmp_path], "--save-dir", "would overwrite the input"),
        (["--json", tmp_path / "out" / "clip.mp4", "--save-dir", tmp_path / "out"], "--json", "--save-dir writes"),
        (["--json", tmp_path / "both", "--save-dir", tmp_path / "both"], "--json", "is the --save-dir folder itself"),
        (["--json", f"{tmp_path / 'newdir'}/"], "--json", "ends in a path separator"),
    ]
    for options, option, expected in cases:
        code, stdout, err = run_cli(["detect", *model, source, *options, *family], capsys)
        one_error_line(code, err, option, expected)
        assert "frames" not in stdout
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # nothing created, no .partial debris


def test_a_video_read_through_dev_fd_gives_every_frame(video, frames, model_args, tmp_path, capsys):
    """`detect MODEL /dev/stdin < video.avi` took the file for a camera: newest frames only, arrival timestamps."""
    model, family = model_args
    with open(video, "rb") as handle:
        code, stdout, err = run_cli(["detect", *model, f"/dev/fd/{handle.fileno()}", "--json", tmp_path / "r.jsonl",
                                     *family], capsys)
    assert code == 0, err
    records = read_jsonl(tmp_path / "r.jsonl")
    assert [r["index"] for r in records] == list(range(COUNT))
    assert [r["timestamp"] for r in records] == pytest.approx([i / 12.0 for i in range(COUNT)], abs=1e-6)  # rounded


def test_sigterm_during_a_video_run_leaves_no_partial_output(fastestdet_dir, tmp_path):
    """SIGTERM (a service stopped) killed the process at Python's default handler: no error line, and the JSON
    Lines and annotated video were left as hidden .partial files. Now it ends as Ctrl-C does: one line, exit 130,
    nothing written."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO_ROOT

    clip = write_video(tmp_path / "long.avi", video_frames(40, (176, 128)) * 10, fps=25.0)  # 400 frames
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-c", "import sys; from edgekit.cli import main; sys.exit(main())", "detect",
               str(fastestdet_dir / "FastestDet.onnx"), str(clip), "--family", "fastestdet", "--names",
               str(fastestdet_dir / "coco.names"), "--mode", "latency", "--json", str(out / "r.jsonl"),
               "--save-dir", str(out / "video")]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.rglob("*.partial*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.strip()][-1] == "error: interrupted"
    assert [p.name for p in out.rglob("*") if p.is_file()] == []


def test_an_odd_frame_size_is_said_not_silently_cropped(model_args, tmp_path, capsys):
    """A 333x251 source gave a 332x250 annotated video with exit 0 and no word (4:2:0 codecs store even sides)."""
    model, family = model_args
    clip = tmp_path / "odd.mjpeg"  # concatenated JPEGs: FFmpeg reads them at their own (odd) size
    clip.write_bytes(b"".join(cv2.imencode(".jpg", frame)[1].tobytes() for frame in video_frames(3, (333, 251))))
    code, stdout, err = run_cli(["detect", *model, clip, "--save-dir", tmp_path / "out", *family], capsys)
    assert code == 0, err
    written = cv2.VideoCapture(str(tmp_path / "out" / "odd.mp4"))
    size = (int(written.get(cv2.CAP_PROP_FRAME_WIDTH)), int(written.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    written.release()
    assert size == (332, 250)
    assert "the frames are 333x251; the video is 332x250" in err


def test_a_failed_run_leaves_no_output_folders(model_args, tmp_path, capsys):
    """A video with no decodable frame: one error, and the folders --json / --save-dir would have made were left
    behind empty; now the outputs take the folders they made with them."""
    model, family = model_args
    empty = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (176, 128))
    writer.release()  # a header, no frame
    out = tmp_path / "out"
    code, _, err = run_cli(["detect", *model, empty, "--json", out / "a" / "r.jsonl", "--save-dir", out / "b" / "c",
                            *family], capsys)
    one_error_line(code, err, "empty.avi")
    assert not out.exists()
