"""CLI contract: one clear `error:` line and a non-zero exit on bad input, never a traceback."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.helpers import fastestdet_like_artifact, one_error_line, run_cli
from tests.onnx_graphs import fastestdet_like_graph, fastestdet_like_spec, save


@pytest.fixture()
def artifact(tmp_path):
    return fastestdet_like_artifact(tmp_path / "art")


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(folder / "000123.jpg")
    Image.fromarray(rng.integers(0, 256, (70, 40), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (33, 47, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    return folder


run = run_cli
assert_one_line_error = one_error_line


def test_detect_writes_coco_json_and_drawings(artifact, images, tmp_path, capsys):
    code, out, err = run(["detect", artifact, images, "--json", tmp_path / "r.json", "--save-dir", tmp_path / "drawn"], capsys)
    assert code == 0, err
    entries = json.loads((tmp_path / "r.json").read_text())
    assert entries, "the tiny model detects something at conf 0.05"
    assert set(entries[0]) == {"image_id", "file_name", "category_id", "bbox", "score"}
    assert {e["file_name"] for e in entries} <= {"000123.jpg", "gray.png", "alpha.png"}
    assert 123 in {e["image_id"] for e in entries if e["file_name"] == "000123.jpg"} or \
        not [e for e in entries if e["file_name"] == "000123.jpg"]
    for entry in entries:
        x, y, w, h = entry["bbox"]
        assert w >= 0 and h >= 0 and x >= 0 and y >= 0
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["000123.jpg", "alpha.jpg", "gray.jpg"]
    # grayscale and RGBA inputs were converted, not rejected
    assert "gray.png" in out and "alpha.png" in out


def test_inspect_reports_and_verifies(artifact, capsys):
    code, out, _ = run(["inspect", artifact], capsys)
    assert code == 0 and "fastestdet" in out and "ok" in out
    with open(artifact / "model.onnx", "ab") as handle:
        handle.write(b"junk")
    code, out, err = run(["inspect", artifact], capsys)
    assert "MODIFIED" in out
    assert_one_line_error(code, err, "do not match the manifest")


def write_16bit(path):
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(path)  # PIL mode I;16


@pytest.mark.parametrize("case, fragment", [
    ("missing_model", "no such checkpoint, ONNX file or artifact folder"),
    ("corrupt_onnx", "cannot load this model"),
    ("truncated_onnx", "not a loadable ONNX model"),
    ("missing_image", "no such image file or folder"),
    ("sixteen_bit", "8-bit"),
    ("empty_image_file", "image"),
    ("nan_output", "NaN"),
    ("unknown_head", "unknown head kind 'yolo_magic'"),
    ("torch_backend_on_artifact", "--backend torch needs a PyTorch checkpoint"),
    ("unknown_backend", "unknown backend 'tensorflow'"),
])
def test_detect_bad_input(case, fragment, artifact, images, tmp_path, capsys):
    from dataclasses import replace

    from edgekit.spec import HeadSpec

    model, source, extra = artifact, images / "000123.jpg", []
    spec = fastestdet_like_spec()
    if case == "missing_model":
        model = tmp_path / "nope.onnx"
    elif case == "corrupt_onnx":
        model = tmp_path / "corrupt.onnx"
        good = fastestdet_like_graph(spec).SerializeToString()
        model.write_bytes(good[:40] + bytes(range(256)) * 4 + good[40:])
        # keep the spec readable so the failure is in loading the graph itself
        model = artifact
        (artifact / "model.onnx").write_bytes(b"\x08\x07" + bytes(200))
        from edgekit.runtime.artifact import sha256_file
        manifest = json.loads((artifact / "edgekit.json").read_text())
        manifest["files"]["model.onnx"] = sha256_file(artifact / "model.onnx")
        (artifact / "edgekit.json").write_text(json.dumps(manifest))
    elif case == "truncated_onnx":
        model = tmp_path / "truncated.onnx"
        full = fastestdet_like_graph(spec).SerializeToString()
        model.write_bytes(full[: len(full) // 2])
    elif case == "missing_image":
        source = tmp_path / "nope.jpg"
    elif case == "sixteen_bit":
        source = tmp_path / "deep.png"
        write_16bit(source)
    elif case == "empty_image_file":
        source = tmp_path / "empty.jpg"
        source.write_bytes(b"")
    elif case == "nan_output":
        model = save(fastestdet_like_graph(spec, nan=True), tmp_path / "nan.onnx")
    elif case == "unknown_head":
        bad = replace(spec, head=HeadSpec("yolo_magic", ("output",)))
        model = save(fastestdet_like_graph(bad), tmp_path / "magic.onnx")
    elif case == "torch_backend_on_artifact":
        extra = ["--backend", "torch"]
    elif case == "unknown_backend":
        extra = ["--backend", "tensorflow"]
    code, _, err = run(["detect", model, source, *extra], capsys)
    assert_one_line_error(code, err, fragment)


def test_runner_checks_input_rank_and_dtype(artifact):
    from edgekit.errors import InputError
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(artifact / "model.onnx") as runner:
        with pytest.raises(InputError, match=r"input 'images': expected rank 4 .* got rank 3"):
            runner.infer({"images": np.zeros((3, 64, 64), np.float32)})
        with pytest.raises(InputError, match="expected dtype float32, got float64"):
            runner.infer({"images": np.zeros((1, 3, 64, 64), np.float64)})
        with pytest.raises(InputError, match=r"axis 2 must be 64"):
            runner.infer({"images": np.zeros((1, 3, 32, 64), np.float32)})
        with pytest.raises(InputError, match="missing"):
            runner.infer({"pixels": np.zeros((1, 3, 64, 64), np.float32)})


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "detect", str(tmp_path / "nope"), "x.jpg"],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr


def test_help_for_every_command(capsys):
    for command in ["export", "detect", "inspect"]:
        code, out, _ = run([command, "--help"], capsys)
        assert code == 0 and "Usage" in out


def test_bench_reports_stages_and_ratio(artifact, images, tmp_path, capsys):
    import json as _json

    code, out, err = run(["bench", artifact, "--image", images / "000123.jpg", "--runs", "3", "--warmup", "1",
                          "--report", tmp_path / "rep", "--json", tmp_path / "b.json"], capsys)
    assert code == 0, err
    assert "onnxruntime/fp32" in out and "e2e / raw" in out
    data = _json.loads((tmp_path / "b.json").read_text())
    assert data[0]["runs"] == 3 and data[0]["raw"]["median_ms"] > 0
    assert (tmp_path / "rep" / "bench.png").stat().st_size > 1000
