"""COCO and YOLO dataset readers: same boxes from both layouts, one-line errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.errors import EdgekitError
from edgekit.validate import synth
from edgekit.validate.datasets import DatasetError, load_dataset


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("ds") / "tiny", "val", seed=5, num_images=8, progress=False)


def _copy(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop) if drop else None)
    return dst


def _coco_oracle(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """file_name -> (xyxy boxes, 0-based labels) straight from the JSON, independent of the reader."""
    coco = json.loads((folder / "annotations" / "instances.json").read_text())
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    out = {name: ([], []) for name in names.values()}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        out[names[a["image_id"]]][0].append([x, y, x + w, y + h])
        out[names[a["image_id"]]][1].append(a["category_id"] - 1)
    return {k: (np.array(b, np.float64).reshape(-1, 4), np.array(lb)) for k, (b, lb) in out.items()}


def test_coco_and_yolo_layouts_load_the_same_boxes(synth_dir, tmp_path):
    coco = load_dataset(synth_dir)  # folder with annotations/ -> COCO
    yolo = load_dataset(synth_dir, layout="yolo")
    yolo_only = load_dataset(_copy(synth_dir, tmp_path / "yolo", drop=("annotations",)))  # auto-detected
    oracle = _coco_oracle(synth_dir)

    assert coco.layout == "coco" and yolo.layout == "yolo" == yolo_only.layout
    for ds in (coco, yolo, yolo_only):
        assert ds.class_names == synth.CLASS_NAMES
        assert ds.category_ids == (1, 2, 3, 4, 5, 6)
        assert len(ds) == 8
        assert ds.num_objects == sum(len(v[1]) for v in oracle.values()) > 8
    for c_item, y_item in zip(coco.items, yolo_only.items):
        assert c_item.file_name == y_item.file_name and c_item.image_id == y_item.image_id
        assert (c_item.width, c_item.height) == (y_item.width, y_item.height) == (160, 160)
        assert c_item.boxes.dtype == np.float32 and c_item.labels.dtype == np.int64
        expected_boxes, expected_labels = oracle[c_item.file_name]
        np.testing.assert_array_equal(c_item.labels, expected_labels)
        np.testing.assert_array_equal(y_item.labels, expected_labels)
        np.testing.assert_allclose(c_item.boxes, expected_boxes, atol=1e-4)
        # YOLO stores cx cy w h / 160 with 6 decimals: the round trip loses < 1e-3 px.
        np.testing.assert_allclose(y_item.boxes, expected_boxes, atol=1e-3)
        assert coco.image_path(c_item).is_file() and yolo_only.image_path(y_item).is_file()


def test_coco_json_path_and_standard_coco_folder_names(synth_dir, tmp_path):
    direct = load_dataset(synth_dir / "annotations" / "instances.json")
    assert direct.image_dir == synth_dir / "images" and direct.root == synth_dir
    # COCO 2017 layout: annotations/instances_val2017.json next to val2017/.
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copytree(synth_dir / "images", root / "val2017")
    shutil.copy(synth_dir / "annotations" / "instances.json", root / "annotations" / "instances_val2017.json")
    (root / "annotations" / "captions_val2017.json").write_text("{}")  # ignored: instances_* preferred
    ds = load_dataset(root)
    assert ds.image_dir == root / "val2017" and len(ds) == 8


def test_coco_crowd_and_unannotated_images(synth_dir, tmp_path):
    root = _copy(synth_dir, tmp_path / "crowd")
    path = root / "annotations" / "instances.json"
    coco = json.loads(path.read_text())
    first_image = coco["images"][0]["id"]
    before = sum(a["image_id"] == first_image for a in coco["annotations"])
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != coco["images"][1]["id"]]
    coco["annotations"].append({"id": 10_000, "image_id": first_image, "category_id": 3,
                                "bbox": [1, 2, 30, 40], "area": 1200, "iscrowd": 1})
    path.write_text(json.dumps(coco))
    ds = load_dataset(root)
    assert len(ds.items[0].boxes) == before
    np.testing.assert_array_equal(ds.items[0].crowd_boxes, [[1, 2, 31, 42]])
    np.testing.assert_array_equal(ds.items[0].crowd_labels, [2])
    assert ds.items[1].boxes.shape == (0, 4) and ds.items[1].labels.shape == (0,)


def test_yolo_names_from_data_yaml_and_missing_label_file(synth_dir, tmp_path):
    root = _copy(synth_dir, tmp_path / "yaml", drop=("annotations", "classes.txt"))
    (root / "data.yaml").write_text("path: .\ntrain: images\nnames:\n  0: circle\n  1: square\n  2: triangle\n"
                                    "  3: star\n  4: ring\n  5: cross\n")
    first_label = sorted((root / "labels").glob("*.txt"))[0]
    first_label.unlink()
    ds = load_dataset(root)
    assert ds.class_names == synth.CLASS_NAMES
    assert ds.items[0].boxes.shape == (0, 4)
    (root / "data.yaml").write_text("names: ['a', 'b', 'c', 'd', 'e', 'f']  # six\n")
    assert load_dataset(root).class_names == ("a", "b", "c", "d", "e", "f")


def test_yolo_nested_split_folders_and_polygon_lines(tmp_path):
    root = tmp_path / "nested"
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(root / "images" / "val" / "a.png")
    (root / "labels" / "val" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.1 0.2 0.3 0.2 0.2 0.6\n")
    (root / "classes.txt").write_text("x\ny\n")
    ds = load_dataset(root)
    item = ds.items[0]
    assert item.file_name == "val/a.png" and (item.width, item.height) == (200, 100)
    np.testing.assert_allclose(item.boxes, [[80, 30, 120, 70], [20, 20, 60, 60]], atol=1e-4)
    np.testing.assert_array_equal(item.labels, [1, 0])


# ---- bad input: one line, names the file (and line), says what was expected ----------------

def _error(path, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, EdgekitError)
    return message


def test_missing_dir(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope")


def test_folder_with_neither_layout(tmp_path):
    assert "neither" in _error(tmp_path)


def test_no_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "classes.txt").write_text("a\n")
    assert "no images" in _error(tmp_path)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances.json").write_text(json.dumps({"images": [], "categories": []}))
    assert "no images" in _error(tmp_path)


def test_malformed_json(synth_dir, tmp_path):
    root = _copy(synth_dir, tmp_path / "badjson")
    path = root / "annotations" / "instances.json"
    path.write_text('{"images": [\n  {"id": 1,,}\n]}')
    message = _error(root)
    assert str(path) in message and "malformed JSON at line 2" in message
    path.write_text('{"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}]}')
    assert "images[0]: missing file_name, width, height" in _error(root)


def test_image_listed_but_missing(synth_dir, tmp_path):
    root = _copy(synth_dir, tmp_path / "missing")
    victims = sorted((root / "images").glob("*.jpg"))[2:4]
    for v in victims:
        v.unlink()
    message = _error(root)
    assert f"{victims[0].name} is listed but missing (and 1 more)" in message


def test_annotation_with_unknown_category(synth_dir, tmp_path):
    root = _copy(synth_dir, tmp_path / "cat")
    path = root / "annotations" / "instances.json"
    coco = json.loads(path.read_text())
    coco["annotations"][3]["category_id"] = 42
    path.write_text(json.dumps(coco))
    assert "annotations[3]: category_id 42 is not in 'categories'" in _error(root)


@pytest.mark.parametrize("line, expected", [
    ("0 0.5 0.5 0.2", "4 fields; expected 5"),
    ("0 0.5 0.5 0.2 0.2 0.9", "6 fields; expected 5"),
    ("6 0.5 0.5 0.2 0.2", "class 6 out of range; expected an integer in 0..5"),
    ("-1 0.5 0.5 0.2 0.2", "class -1 out of range"),
    ("1.5 0.5 0.5 0.2 0.2", "class 1.5 out of range"),
    ("0 0.5 zero 0.2 0.2", "is not numeric"),
    ("0 0.5 0.5 20 20", "not normalised; expected values in [0, 1]"),
])
def test_bad_yolo_label_line(synth_dir, tmp_path, line, expected):
    root = _copy(synth_dir, tmp_path / "yolo", drop=("annotations",))
    label = sorted((root / "labels").glob("*.txt"))[1]
    good = label.read_text().splitlines()
    label.write_text("\n".join(good[:1] + [line] + good[1:]) + "\n")
    message = _error(root)
    assert f"{label}:2:" in message and expected in message


def test_yolo_without_class_names(synth_dir, tmp_path):
    """No classes.txt / data.yaml: the dataset loads unnamed (validate then maps it by index, with a warning)."""
    root = _copy(synth_dir, tmp_path / "nonames", drop=("annotations", "classes.txt"))
    named = load_dataset(synth_dir, layout="yolo")
    unnamed = load_dataset(root)
    assert not unnamed.named and named.named
    seen = max(int(item.labels.max()) for item in named.items if len(item.labels))
    assert unnamed.class_names == tuple(str(k) for k in range(seen + 1))
    for a, b in zip(named.items, unnamed.items):
        assert a.labels.tolist() == b.labels.tolist()


def test_unreadable_image(synth_dir, tmp_path):
    root = _copy(synth_dir, tmp_path / "corrupt", drop=("annotations",))
    bad = sorted((root / "images").glob("*.jpg"))[0]
    bad.write_bytes(b"not a jpeg")
    assert f"{bad}: cannot read image header" in _error(root)


# ---- silently wrong ground truth (a hostile review, session 12): each was scored with exit 0 ----------------------

def _with_exif_orientation(path: Path, orientation: int) -> None:
    """Re-save ``path`` turned a quarter (stored pixels rotated) with an EXIF orientation that turns it back."""
    upright = Image.open(path)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what orientation 6 (rotate 270 to display) undoes
    exif = stored.getexif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif.tobytes())


def test_yolo_labels_are_normalised_by_the_upright_image(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6: the detector sees the upright image (load_image), so
    the normalised labels scale by its size. They scaled by the stored header's (swapped), moving every box."""
    root = tmp_path / "exif"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (200, 100)).save(root / "images" / "a.jpg")
    (root / "labels" / "a.txt").write_text("0 0.25 0.5 0.1 0.2\n")
    (root / "classes.txt").write_text("x\n")
    upright = load_dataset(root).items[0]
    _with_exif_orientation(root / "images" / "a.jpg", 6)
    assert Image.open(root / "images" / "a.jpg").size == (100, 200)  # stored sideways
    rotated = load_dataset(root).items[0]
    assert (rotated.width, rotated.height) == (upright.width, upright.height) == (200, 100)
    np.testing.assert_allclose(rotated.boxes, upright.boxes)
    np.testing.assert_allclose(upright.boxes, [[40, 40, 60, 60]], atol=1e-4)


def test_coco_image_sizes_are_checked_against_the_files(synth_dir, tmp_path):
    """COCO boxes are pixels of the listed width x height: a file resized after annotation (or turned by EXIF) is
    refused, naming it and both sizes; before, its boxes were scored at the wrong scale."""
    root = _copy(synth_dir, tmp_path / "resized")
    victim = sorted((root / "images").glob("*.jpg"))[1]
    Image.open(victim).resize((80, 80)).save(victim)
    message = _error(root)
    assert f"({victim.name}) says 160x160 but the file is 80x80" in message
    Image.new("RGB", (160, 160)).save(victim)
    _with_exif_orientation(victim, 6)  # square: the stored size is the listed one, and so is the upright one
    assert len(load_dataset(root)) == 8
    rect = _copy(synth_dir, tmp_path / "sideways")
    coco_path = rect / "annotations" / "instances.json"
    coco = json.loads(coco_path.read_text())
    image = coco["images"][0]
    Image.new("RGB", (160, 80)).save(rect / "images" / image["file_name"])
    _with_exif_orientation(rect / "images" / image["file_name"], 6)  # stored 80x160, displayed 160x80
    image["width"], image["height"] = 80, 160
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != image["id"]]
    coco_path.write_text(json.dumps(coco))
    assert "says 80x160, the size of its stored pixels, but its EXIF orientation turns it to 160x80" in _error(rect)


def test_label_file_without_an_image(synth_dir, tmp_path):
    """labels/ that does not mirror images/: the labels matched no image and dropped out of the mAP silently."""
    root = _copy(synth_dir, tmp_path / "orphans", drop=("annotations",))
    (root / "images" / "val").mkdir()
    for image in sorted((root / "images").glob("*.jpg")):
        image.rename(root / "images" / "val" / image.name)
    labels = sorted((root / "labels").glob("*.txt"))
    message = _error(root)
    assert f"label file {labels[0]} has no image (and {len(labels) - 1} more)" in message
    assert str(root / "images" / labels[0].stem) in message
    (root / "labels" / "val").mkdir()
    for label in labels:
        label.rename(root / "labels" / "val" / label.name)
    assert load_dataset(root).num_objects == load_dataset(synth_dir, layout="yolo").num_objects


def test_classes_txt_and_data_yaml_must_agree(synth_dir, tmp_path):
    root = _copy(synth_dir, tmp_path / "conflict", drop=("annotations",))
    names = list(synth.CLASS_NAMES)
    (root / "data.yaml").write_text("names: [" + ", ".join(names) + "]\n")
    assert load_dataset(root).class_names == synth.CLASS_NAMES  # the same list twice is fine
    swapped = [names[1], names[0], *names[2:]]
    (root / "data.yaml").write_text("names: [" + ", ".join(swapped) + "]\n")
    message = _error(root)
    assert "classes.txt" in message and "data.yaml disagree" in message
    assert f"class 0 is {names[0]!r} in one and {names[1]!r} in the other" in message


def test_pose_dataset_is_refused(synth_dir, tmp_path):
    """Ultralytics pose lines ('class cx cy w h' + keypoints) have the field count of a polygon and were read as
    one: its extent is the keypoints' box, not the labelled box."""
    root = _copy(synth_dir, tmp_path / "pose", drop=("annotations", "classes.txt"))
    names = "names: [" + ", ".join(synth.CLASS_NAMES) + "]\n"
    (root / "data.yaml").write_text("kpt_shape: [12, 2]\n" + names)
    message = _error(root)
    assert "data.yaml: a pose dataset (kpt_shape)" in message
    (root / "data.yaml").write_text(names)
    assert load_dataset(root).class_names == synth.CLASS_NAMES


def test_data_yaml_splits(synth_dir, tmp_path):
    """A YOLO layout scores every image under images/ (train and val alike); `split` reads data.yaml's folder for
    one split alone, as a YOLO user's val run does. Splits that name no folder of images/ are not offered."""
    root = _copy(synth_dir, tmp_path / "splits", drop=("annotations",))
    images, labels = sorted((root / "images").glob("*.jpg")), sorted((root / "labels").glob("*.txt"))
    for folder in ("train", "val"):
        (root / "images" / folder).mkdir()
        (root / "labels" / folder).mkdir()
    for k, (image, label) in enumerate(zip(images, labels)):
        folder = "val" if k < 3 else "train"
        image.rename(root / "images" / folder / image.name)
        label.rename(root / "labels" / folder / label.name)
    (root / "data.yaml").write_text("path: .  # the dataset root\ntrain: images/train\nval: 'images/val'\n"
                                    "test: [a, b]\n")
    every = load_dataset(root)
    assert len(every) == 8 and every.splits == ("train", "val") and every.split is None
    val = load_dataset(root, split="val")
    assert val.split == "val" and [item.file_name for item in val.items] == [f"val/{p.name}" for p in images[:3]]
    assert val.num_objects == sum(len(item.boxes) for item in every.items if item.file_name.startswith("val/"))
    assert "--split test: its data.yaml names train: images/train, val: images/val" in _error(root, split="test")
    assert "is a COCO dataset" in _error(synth_dir, split="val")
