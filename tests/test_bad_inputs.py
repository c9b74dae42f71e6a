"""A table of bad inputs, each fed to the CLI in-process: every one must end in exit code != 0, exactly one
`error:` line on stderr naming the problem, no traceback, and nothing left behind (no artifact folder, no
partial/temp folder, no lock file, no 0-byte output: the fixture folder is byte-for-byte as before).

The fixture files are built once for the module; each case writes its outputs into the same folder, so
the before/after snapshot catches anything a failed command leaves there.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.cli import main
from tests.conftest import REPO_ROOT

ZOO_CHECKPOINT = REPO_ROOT / "edgekit" / "zoo" / "yolov5.pt"
PWNED = "pwned-marker"  # a crafted pickle would create this file if anything from it ran


def _png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def _noise(path: Path, height: int = 48, width: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _yolo(root: Path, labels: dict[str, str] | None = None, names: str | None = "c0\nc1\nc2\n",
          with_labels: bool = True) -> Path:
    (root / "images").mkdir(parents=True)
    for i in range(2):
        _noise(root / "images" / f"{i}.jpg", seed=i)
    if with_labels:
        (root / "labels").mkdir()
        for name, text in (labels or {"0": "0 0.5 0.5 0.2 0.2\n"}).items():
            (root / "labels" / f"{name}.txt").write_text(text)
    if names is not None:
        (root / "classes.txt").write_text(names)
    return root


def _coco(root: Path, mutate=None) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    _noise(root / "images" / "a.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
            "categories": [{"id": 1, "name": "c0"}, {"id": 2, "name": "c1"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20]}]}
    if mutate is not None:
        mutate(data)
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return root


class _Evil:
    """Pickles as a call to os.system: loading it must not run anything."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    import torch

    from edgekit.convert.artifact import ArtifactWriter
    from edgekit.models.loading import load_checkpoint, save_checkpoint
    from edgekit.runtime.artifact import ModelEntry
    from tests.onnx_graphs import fastestdet_like_graph, fastestdet_like_spec, save

    base = tmp_path_factory.mktemp("bad_inputs")
    # --- checkpoints
    good = ZOO_CHECKPOINT.read_bytes()
    (base / "truncated.pt").write_bytes(good[: len(good) // 2])
    (base / "empty.pt").write_bytes(b"")
    (base / "dir.pt").mkdir()
    (base / "random.pt").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (base / "text.pt").write_text("this is not a checkpoint\n")
    (base / "evil_raw.pt").write_bytes(pickle.dumps(_Evil(base / PWNED), protocol=2))
    torch.save({"model": _Evil(base / PWNED)}, base / "evil_zip.pt")
    model = load_checkpoint(ZOO_CHECKPOINT)
    with torch.no_grad():
        next(p for p in model.parameters() if p.dim() == 4)[0, 0, 0, 0] = float("nan")
    save_checkpoint(model, base / "nan.pt")
    torch.save(load_checkpoint(ZOO_CHECKPOINT).state_dict(), base / "state_dict.pt")
    (base / "names3.txt").write_text("a\nb\nc\n")
    # --- ONNX files
    spec = fastestdet_like_spec()
    full = fastestdet_like_graph(spec).SerializeToString()
    (base / "truncated.onnx").write_bytes(full[: len(full) // 2])
    (base / "renamed.pt").write_bytes(full)  # an ONNX export saved under a checkpoint's name
    (base / "random.onnx").write_bytes(np.random.default_rng(2).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    (base / "empty.onnx").write_bytes(b"")
    import onnx
    from onnx import TensorProto, helper

    no_inputs = helper.make_model(helper.make_graph(
        [helper.make_node("Constant", [], ["output"], value=helper.make_tensor("v", TensorProto.FLOAT, [1, 8, 4, 4],
                                                                                [0.5] * 128))],
        "no_inputs", [], [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 4, 4])]),
        opset_imports=[helper.make_opsetid("", 17)])
    no_inputs.ir_version = 8
    onnx.save(no_inputs, str(base / "no_inputs.onnx"))
    rank2 = helper.make_model(helper.make_graph(
        [helper.make_node("Sigmoid", ["images"], ["output"])], "rank2",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8])]),
        opset_imports=[helper.make_opsetid("", 17)])
    rank2.ir_version = 8
    onnx.save(rank2, str(base / "rank2.onnx"))
    save(fastestdet_like_graph(spec, nan=True), base / "nan_output.onnx")
    # --- artifacts
    with ArtifactWriter(base / "art") as writer:
        save(fastestdet_like_graph(spec), writer.path("model.onnx"))
        writer.commit(spec, [ModelEntry("onnxruntime", "fp32", "model.onnx")], {"producer": "test"})
    manifest = json.loads((base / "art" / "edgekit.json").read_text())

    def variant(name: str, change) -> None:
        shutil.copytree(base / "art", base / name)
        change(base / name)

    variant("art_no_manifest", lambda p: (p / "edgekit.json").unlink())
    variant("art_bad_json", lambda p: (p / "edgekit.json").write_text('{"format": "edgekit-artifact", '))
    variant("art_list_json", lambda p: (p / "edgekit.json").write_text("[1, 2, 3]"))
    variant("art_hash_changed", lambda p: (p / "model.onnx").write_bytes((p / "model.onnx").read_bytes() + b"\0"))
    variant("art_no_model", lambda p: (p / "model.onnx").unlink())

    def traversal(p: Path) -> None:
        data = json.loads(json.dumps(manifest))
        data["models"][0]["file"] = "../art/model.onnx"
        data["files"] = {"../art/model.onnx": data["files"]["model.onnx"]}
        (p / "edgekit.json").write_text(json.dumps(data))

    variant("art_traversal", traversal)
    (base / "art_empty").mkdir()
    # --- images
    _noise(base / "good.jpg")
    (base / "empty.jpg").write_bytes(b"")
    (base / "text.jpg").write_text("hello, not an image\n")
    jpeg = (base / "good.jpg").read_bytes()
    (base / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    png_path = base / "full.png"
    _noise(png_path)
    png = png_path.read_bytes()
    (base / "truncated.png").write_bytes(png[: len(png) // 2])
    png_path.unlink()
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(base / "deep16.png")
    _png_header_only(base / "bomb.png", 10_000, 10_000)
    (base / "notes.txt").write_text("an image list, not an image\n")
    (base / "no_images").mkdir()
    (base / "no_images" / "readme.md").write_text("x")
    (base / "a_file").write_text("a file where a folder is expected\n")
    (base / "existing_dir").mkdir()
    # --- datasets
    _yolo(base / "ds_good")
    _yolo(base / "ds_no_labels", with_labels=False)
    _yolo(base / "ds_fields", {"0": "0 0.5 0.5\n"})
    _yolo(base / "ds_text", {"0": "zero 0.5 0.5 0.2 0.2\n"})
    _yolo(base / "ds_class_range", {"1": "7 0.5 0.5 0.2 0.2\n"})
    _yolo(base / "ds_outside", {"0": "0 0.05 0.5 0.2 0.2\n"})
    _yolo(base / "ds_zero_area", {"0": "0 0.5 0.5 0 0.2\n"})
    _yolo(base / "ds_dup_names", names="c0\nc1\nc0\n")
    _yolo(base / "ds_unknown_names", names="dog\ncat\n")
    (base / "ds_binary").mkdir()
    _yolo(base / "ds_binary" / "d", {"0": "0 0.5 0.5 0.2 0.2\n"})
    (base / "ds_binary" / "d" / "labels" / "1.txt").write_bytes(b"\xff\xfe\x00\x01binary")
    _coco(base / "coco_missing_image", lambda d: d["images"].append(
        {"id": 2, "file_name": "gone.jpg", "width": 64, "height": 48}))
    _coco(base / "coco_outside", lambda d: d["annotations"].append(
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 10, 30, 10]}))
    _coco(base / "coco_unknown_image", lambda d: d["annotations"].append(
        {"id": 2, "image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5]}))
    _coco(base / "coco_dup_names", lambda d: d["categories"].append({"id": 3, "name": "c1"}))
    _coco(base / "coco_zero_area", lambda d: d["annotations"].append(
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]}))
    (base / "coco_bad_json").mkdir()
    (base / "coco_bad_json" / "annotations").mkdir()
    (base / "coco_bad_json" / "annotations" / "instances.json").write_text('{"images": [')
    # --- calibration sets
    (base / "calib_empty").mkdir()
    (base / "calib_junk").mkdir()
    for i in range(3):
        (base / "calib_junk" / f"{i}.jpg").write_text(f"not an image {i}")
    (base / "calib_few").mkdir()
    for i in range(3):
        _noise(base / "calib_few" / f"{i}.png", seed=10 + i)
    return base


A, IMG, DS = "art", "good.jpg", "ds_good"
CONVERT = ["convert", "{zoo}", "--target", "onnxruntime-cpu"]
INT8 = [*CONVERT, "--precision", "int8", "-o", "out_int8"]

# (case id, argv: {zoo} is the bundled checkpoint, paths are relative to the fixture folder; a fragment of the error)
CASES = [
    # checkpoints
    ("ckpt-truncated", ["export", "truncated.pt", "-o", "out"], "truncated.pt"),
    ("ckpt-empty", ["export", "empty.pt", "-o", "out"], "empty.pt"),
    ("ckpt-directory", ["export", "dir.pt", "-o", "out"], "dir.pt"),
    ("ckpt-random-bytes", ["export", "random.pt", "-o", "out"], "random.pt"),
    ("ckpt-text", ["export", "text.pt", "-o", "out"], "text.pt"),
    ("ckpt-missing", ["export", "missing.pt", "-o", "out"], "missing.pt"),
    ("ckpt-crafted-pickle", ["export", "evil_raw.pt", "-o", "out"], "evil_raw.pt"),
    ("ckpt-crafted-torch-zip", ["export", "evil_zip.pt", "-o", "out"], "evil_zip.pt"),
    ("ckpt-nan-weights", ["export", "nan.pt", "-o", "out"], "NaN"),
    ("ckpt-wrong-family", ["export", "state_dict.pt", "--family", "fastestdet", "--names", "names3.txt", "-o", "out"],
     "state_dict.pt"),
    ("ckpt-convert-truncated", ["convert", "truncated.pt", "--target", "onnxruntime-cpu", "-o", "out"], "truncated.pt"),
    ("ckpt-detect-random", ["detect", "random.pt", IMG], "random.pt"),
    ("ckpt-onnx-renamed", ["export", "renamed.pt", "-o", "out"], "is an ONNX model (by its content)"),
    ("ckpt-detect-crafted", ["detect", "evil_zip.pt", IMG], "evil_zip.pt"),
    ("ckpt-validate-nan", ["validate", "nan.pt", "--data", DS], "NaN"),
    # ONNX files
    ("onnx-truncated", ["detect", "truncated.onnx", IMG], "truncated.onnx"),
    ("onnx-random-bytes", ["detect", "random.onnx", IMG], "random.onnx"),
    ("onnx-empty", ["detect", "empty.onnx", IMG], "empty.onnx"),
    ("onnx-no-inputs", ["detect", "no_inputs.onnx", IMG], "no_inputs.onnx"),
    ("onnx-wrong-rank-input", ["detect", "rank2.onnx", IMG], "rank2.onnx"),
    ("onnx-nan-output", ["detect", "nan_output.onnx", IMG], "NaN"),
    ("onnx-validate-random", ["validate", "random.onnx", "--data", DS], "random.onnx"),
    ("onnx-convert-truncated", ["convert", "truncated.onnx", "--target", "onnxruntime-cpu", "-o", "out"],
     "truncated.onnx"),
    ("onnx-inspect-truncated", ["inspect", "truncated.onnx"], "truncated.onnx"),
    # artifacts
    ("art-missing-manifest", ["detect", "art_no_manifest", IMG], "no edgekit.json"),
    ("art-bad-json", ["detect", "art_bad_json", IMG], "not valid JSON"),
    ("art-json-list", ["detect", "art_list_json", IMG], "not an edgekit manifest"),
    ("art-hash-changed", ["detect", "art_hash_changed", IMG], "sha256"),
    ("art-path-traversal", ["detect", "art_traversal", IMG], "../art/model.onnx"),
    ("art-missing-model-file", ["detect", "art_no_model", IMG], "model.onnx"),
    ("art-empty-folder", ["detect", "art_empty", IMG], "no edgekit.json"),
    ("art-inspect-hash-changed", ["inspect", "art_hash_changed"], "do not match the manifest"),
    ("art-bench-missing-manifest", ["bench", "art_no_manifest", "--image", IMG, "--runs", "1"], "no edgekit.json"),
    ("art-validate-bad-json", ["validate", "art_bad_json", "--data", DS], "not valid JSON"),
    ("art-missing", ["detect", "nowhere", IMG], "nowhere"),
    # images
    ("img-empty-file", ["detect", A, "empty.jpg"], "empty.jpg"),
    ("img-text-file", ["detect", A, "text.jpg"], "text.jpg"),
    ("img-truncated-jpeg", ["detect", A, "truncated.jpg"], "truncated.jpg"),
    ("img-truncated-png", ["detect", A, "truncated.png"], "truncated.png"),
    ("img-16-bit-png", ["detect", A, "deep16.png"], "8-bit"),
    ("img-decompression-bomb", ["detect", A, "bomb.png"], "megapixel"),
    ("img-not-an-image-suffix", ["detect", A, "notes.txt"], "not an image file name"),
    ("img-folder-without-images", ["detect", A, "no_images"], "folder has no images"),
    ("img-missing", ["detect", A, "nope.jpg"], "nope.jpg"),
    ("img-bench-text", ["bench", A, "--image", "text.jpg", "--runs", "1"], "text.jpg"),
    # datasets
    ("ds-missing-labels-folder", ["validate", A, "--data", "ds_no_labels"], "ds_no_labels"),
    ("ds-label-fields", ["validate", A, "--data", "ds_fields"], "0.txt:1"),
    ("ds-label-not-numeric", ["validate", A, "--data", "ds_text"], "0.txt:1"),
    ("ds-label-class-out-of-range", ["validate", A, "--data", "ds_class_range"], "1.txt:1"),
    ("ds-label-outside-image", ["validate", A, "--data", "ds_outside"], "reaches outside the image"),
    ("ds-label-zero-area", ["validate", A, "--data", "ds_zero_area"], "zero width or height"),
    ("ds-label-binary", ["validate", A, "--data", "ds_binary/d"], "1.txt"),
    ("ds-duplicate-class-names", ["validate", A, "--data", "ds_dup_names"], "classes.txt:3"),
    ("ds-names-not-in-model", ["validate", A, "--data", "ds_unknown_names"], "'dog'"),
    ("ds-missing", ["validate", A, "--data", "no_dataset"], "no_dataset"),
    ("coco-image-missing", ["validate", A, "--data", "coco_missing_image"], "gone.jpg"),
    ("coco-bbox-outside", ["validate", A, "--data", "coco_outside"], "annotations[1]"),
    ("coco-bbox-zero-area", ["validate", A, "--data", "coco_zero_area"], "annotations[1]"),
    ("coco-unknown-image-id", ["validate", A, "--data", "coco_unknown_image"], "image_id 9"),
    ("coco-duplicate-category-names", ["validate", A, "--data", "coco_dup_names"], "category id 3"),
    ("coco-bad-json", ["validate", A, "--data", "coco_bad_json"], "malformed JSON"),
    # calibration sets
    ("calib-empty-folder", [*INT8, "--calib", "calib_empty"], "holds no images"),
    ("calib-non-images", [*INT8, "--calib", "calib_junk"], "none of the 3 image files"),
    ("calib-too-few", [*INT8, "--calib", "calib_few"], "need at least 16"),
    ("calib-missing", [*INT8, "--calib", "calib_nowhere"], "does not exist"),
    ("calib-is-a-file", [*INT8, "--calib", "a_file"], "is a file"),
    # numbers
    ("num-conf-negative", ["detect", A, IMG, "--conf", "-1"], "--conf"),
    ("num-iou-2", ["detect", A, IMG, "--iou", "2"], "--iou"),
    ("num-imgsz-33", ["export", "{zoo}", "--imgsz", "33", "-o", "out"], "--imgsz 33"),
    ("num-imgsz-0", [*CONVERT, "--imgsz", "0", "-o", "out"], "--imgsz 0"),
    ("num-threads-negative", ["detect", A, IMG, "--threads", "-1"], "--threads"),
    ("num-runs-0", ["bench", A, "--runs", "0"], "--runs"),
    ("num-warmup-negative", ["bench", A, "--warmup", "-1"], "--warmup"),
    ("num-opset-5", ["export", "{zoo}", "--opset", "5", "-o", "out"], "--opset"),
    ("num-opset-21-convert", [*CONVERT, "--opset", "21", "-o", "out"], "--opset"),
    ("num-drift-budget-negative", [*INT8, "--drift-budget", "-1"], "--drift-budget"),
    ("num-calib-images-0", [*INT8, "--calib-images", "0"], "--calib-images"),
    ("num-percentile-0", [*INT8, "--calib-method", "percentile", "--percentile", "0"], "--percentile"),
    ("num-conf-not-a-number", ["detect", A, IMG, "--conf", "high"], "--conf"),
    # paths
    ("path-output-is-a-file", ["export", "{zoo}", "-o", "a_file"], "a_file"),
    ("path-output-below-a-file", [*CONVERT, "-o", "a_file/out"], "a_file"),
    ("path-output-unwritable", ["export", "{zoo}", "-o", "/proc/edgekit-no-such-dir/out"], "/proc/edgekit-no-such-dir"),
    ("path-existing-artifact", ["export", "{zoo}", "-o", "art"], "art"),
    ("path-json-is-a-folder", ["detect", A, IMG, "--json", "existing_dir"], "--json"),
    ("path-json-below-a-file", ["detect", A, IMG, "--json", "a_file/r.json"], "--json"),
    ("path-save-dir-is-a-file", ["detect", A, IMG, "--save-dir", "a_file"], "--save-dir"),
    ("path-report-is-a-file", ["validate", A, "--data", DS, "--report", "a_file"], "--report"),
    ("path-bench-json-is-a-folder", ["bench", A, "--json", "existing_dir", "--runs", "1"], "--json"),
    ("path-class-map-missing", ["validate", A, "--data", DS, "--class-map", "no_map.json"], "no_map.json"),
]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` (hidden ones too) with its size and content hash."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            found[path.relative_to(folder).as_posix()] = (path.stat().st_size, zlib.crc32(path.read_bytes()))
        else:
            found[path.relative_to(folder).as_posix() + "/"] = (0, 0)
    return found


def _argv(template: list[str]) -> list[str]:
    """Paths in the table are relative to the fixture folder (the test's working directory)."""
    return [str(ZOO_CHECKPOINT) if token == "{zoo}" else token for token in template]


def test_table_is_large_and_unique():
    ids = [case_id for case_id, _, _ in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60


@pytest.mark.parametrize("template, fragment", [pytest.param(t, f, id=i) for i, t, f in CASES])
def test_bad_input_is_one_error_line_and_leaves_nothing(template, fragment, root, capsys, monkeypatch):
    monkeypatch.chdir(root)
    before = _snapshot(root)
    code = main(_argv(template))
    err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and not lines[0].startswith("error: unexpected "), lines[0]  # not a caught bug
    assert fragment in lines[0], lines[0]
    after = _snapshot(root)
    assert after == before, f"left behind or changed: {sorted(set(after) ^ set(before)) or 'file contents'}"
    assert not (root / PWNED).exists()


@pytest.mark.parametrize("image", ["one_pixel.png", "grey.png", "palette.gif"])
def test_odd_but_valid_images_are_detected(image, root, capsys, tmp_path):
    """Not bad inputs: a 1x1 image, a greyscale PNG and a palette GIF run like any other image."""
    path = tmp_path / image
    if image == "one_pixel.png":
        Image.fromarray(np.array([[[200, 10, 30]]], np.uint8)).save(path)
    elif image == "grey.png":
        Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 50), dtype=np.uint8), "L").save(path)
    else:
        Image.fromarray(np.random.default_rng(4).integers(0, 256, (30, 50, 3), dtype=np.uint8)).convert("P").save(path)
    code = main(["detect", str(root / A), str(path), "--json", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{path}: " in out
    for entry in json.loads((tmp_path / "r.json").read_text()):
        x, y, w, h = entry["bbox"]
        size = Image.open(path).size
        assert x >= -1e-3 and x + w <= size[0] + 1e-3 and y >= -1e-3 and y + h <= size[1] + 1e-3
