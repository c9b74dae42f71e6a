"""CLI output files (issue 13, "Output files"): unique COCO image ids and relative file names in
`detect --json`, no drawing overwritten by another in `--save-dir`, and unwritable output paths
refused before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import fastestdet_like_artifact
from tests.helpers import one_error_line as assert_one_line_error
from tests.helpers import run_cli as run


@pytest.fixture()
def artifact(tmp_path):
    return fastestdet_like_artifact(tmp_path / "art")


def _image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_json_ids_are_unique_and_file_names_keep_their_folders(artifact, tmp_path, capsys):
    root = tmp_path / "in"
    one, letter = _image(root / "flat" / "1.jpg", 0), _image(root / "flat" / "a.jpg", 1)
    _image(root / "d1" / "0.jpg", 2)
    _image(root / "d2" / "0.jpg", 3)
    out_json = tmp_path / "r.json"
    code, _, err = run(["detect", artifact, one, letter, root / "d1", root / "d2", "--conf", "0.001",
                        "--json", out_json], capsys)
    assert code == 0, err
    entries = json.loads(out_json.read_text())
    id_of = {}
    for entry in entries:
        assert id_of.setdefault(entry["file_name"], entry["image_id"]) == entry["image_id"]
    assert set(id_of) == {"flat/1.jpg", "flat/a.jpg", "d1/0.jpg", "d2/0.jpg"}
    assert len(set(id_of.values())) == 4, id_of
    # a numeric stem stays its id (the COCO convention) the first time it is seen
    assert id_of["flat/1.jpg"] == 1 and id_of["d1/0.jpg"] == 0


def test_save_dir_never_overwrites_one_drawing_with_another(artifact, tmp_path, capsys):
    root = tmp_path / "in"
    sources = [_image(root / "a.jpg", 0), _image(root / "a.png", 1), _image(root / "sub" / "a.jpg", 2)]
    out = tmp_path / "drawn"
    code, stdout, err = run(["detect", artifact, *sources, "--save-dir", out], capsys)
    assert code == 0, err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(written) == 3, written
    assert "a.jpg" in written and "sub/a.jpg" in written
    assert "saved 3 images" in stdout


def test_single_folder_keeps_flat_names(artifact, tmp_path, capsys):
    root = tmp_path / "in"
    _image(root / "000123.jpg", 0)
    _image(root / "cat.png", 1)
    out_json, out = tmp_path / "r.json", tmp_path / "drawn"
    code, _, err = run(["detect", artifact, root, "--conf", "0.001", "--json", out_json, "--save-dir", out], capsys)
    assert code == 0, err
    entries = json.loads(out_json.read_text())
    assert {(e["file_name"], e["image_id"]) for e in entries} == {("000123.jpg", 123), ("cat.png", 124)}
    assert sorted(p.name for p in out.iterdir()) == ["000123.jpg", "cat.jpg"]


@pytest.mark.parametrize("option", ["--json", "--save-dir"])
def test_unwritable_detect_outputs_fail_before_the_work(artifact, tmp_path, capsys, option):
    image = _image(tmp_path / "in" / "x.jpg", 0)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    code, stdout, err = run(["detect", artifact, image, option, blocker / "out"], capsys)
    assert_one_line_error(code, err, option, str(blocker))
    assert "detections" not in stdout  # nothing ran


def test_save_dir_that_is_a_file_and_json_that_is_a_folder(artifact, tmp_path, capsys):
    image = _image(tmp_path / "in" / "x.jpg", 0)
    code, stdout, err = run(["detect", artifact, image, "--save-dir", image], capsys)
    assert_one_line_error(code, err, "--save-dir", "is a file")
    code, stdout, err = run(["detect", artifact, image, "--json", tmp_path], capsys)
    assert_one_line_error(code, err, "--json", "is a directory")
    assert "detections" not in stdout


def test_unwritable_validate_and_bench_outputs_fail_before_the_work(artifact, tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    # --data does not even exist: the output path is checked first, before any loading
    code, _, err = run(["validate", artifact, "--data", tmp_path / "nowhere", "--json", blocker / "r.json"], capsys)
    assert_one_line_error(code, err, "--json", str(blocker))
    code, stdout, err = run(["bench", artifact, "--runs", "1", "--json", blocker / "b.json"], capsys)
    assert_one_line_error(code, err, "--json", str(blocker))
    code, stdout, err = run(["bench", artifact, "--runs", "1", "--report", blocker / "rep"], capsys)
    assert_one_line_error(code, err, "--report", str(blocker))
    assert "image:" not in stdout


def test_save_dir_of_the_images_own_folder_is_refused(artifact, tmp_path, capsys):
    """Drawings are .jpg under the inputs' relative names: `--save-dir` the folder of x.jpg replaced the photo with
    its drawing (exit 0, "replaced 1 from an earlier run"); `--json` an input image replaced it with JSON."""
    image = _image(tmp_path / "in" / "x.jpg", 0)
    before = image.read_bytes()
    code, stdout, err = run(["detect", artifact, image, "--save-dir", tmp_path / "in"], capsys)
    assert_one_line_error(code, err, "--save-dir", f"would overwrite the input {image}")
    code, stdout, err = run(["detect", artifact, image, "--json", image], capsys)
    assert_one_line_error(code, err, "--json", f"would overwrite the input {image}")
    assert image.read_bytes() == before and "detections" not in stdout
    png = _image(tmp_path / "in" / "y.png", 1)  # y.png draws to y.jpg beside it: no input replaced
    code, stdout, err = run(["detect", artifact, png, "--save-dir", tmp_path / "in"], capsys)
    assert code == 0, err
    assert (tmp_path / "in" / "y.jpg").is_file() and image.read_bytes() == before
