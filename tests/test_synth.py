"""The synthetic shapes generator: determinism, annotation sanity, coverage of classes and sizes."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.validate import synth
from tests.helpers import load_tool


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def val300(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "val", "val", seed=0, num_images=300, progress=False)


@pytest.fixture(scope="module")
def val300_coco(val300) -> dict:
    return json.loads((val300 / "annotations" / "instances.json").read_text())


def test_same_seed_gives_identical_files(tmp_path):
    a = synth.generate(tmp_path / "a", "train", seed=7, num_images=6, progress=False)
    b = synth.generate(tmp_path / "b", "train", seed=7, num_images=6, progress=False)
    hashes_a = _file_hashes(a)
    assert len(hashes_a) == 6 + 6 + 1 + 1  # images, labels, instances.json, classes.txt
    assert hashes_a == _file_hashes(b)


@pytest.mark.parametrize("split, seed", [("val", 7), ("train", 8)])
def test_other_split_or_seed_gives_other_images(tmp_path, split, seed):
    base = _file_hashes(synth.generate(tmp_path / "base", "train", seed=7, num_images=4, progress=False))
    other = _file_hashes(synth.generate(tmp_path / "other", split, seed=seed, num_images=4, progress=False))
    base_images = {h for name, h in base.items() if name.startswith("images/")}
    other_images = {h for name, h in other.items() if name.startswith("images/")}
    assert len(base_images) == 4 and not base_images & other_images


def test_first_images_do_not_depend_on_count(tmp_path):
    short = _file_hashes(synth.generate(tmp_path / "short", "val", seed=3, num_images=2, progress=False))
    long = _file_hashes(synth.generate(tmp_path / "long", "val", seed=3, num_images=5, progress=False))
    for name, digest in short.items():
        if name.startswith(("images/", "labels/")):
            assert long[name] == digest


def test_coco_file_is_well_formed(val300, val300_coco):
    coco = val300_coco
    assert [c["name"] for c in coco["categories"]] == list(synth.CLASS_NAMES)
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5, 6]
    assert len(coco["images"]) == 300
    assert len({im["id"] for im in coco["images"]}) == 300
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for im in coco["images"][:20]:
        with Image.open(val300 / "images" / im["file_name"]) as img:
            assert img.size == (im["width"], im["height"]) == (160, 160)
            assert img.mode == "RGB"
    assert (val300 / "classes.txt").read_text().split() == list(synth.CLASS_NAMES)
    assert all(a["iscrowd"] == 0 for a in coco["annotations"])


def test_boxes_inside_image_and_objects_per_image(val300_coco):
    boxes = np.array([a["bbox"] for a in val300_coco["annotations"]], np.float64)
    x, y, w, h = boxes.T
    assert (x >= 0).all() and (y >= 0).all() and (w > 0).all() and (h > 0).all()
    assert (x + w <= 160 + 1e-6).all() and (y + h <= 160 + 1e-6).all()
    per_image = np.bincount([a["image_id"] for a in val300_coco["annotations"]], minlength=301)[1:]
    assert per_image.min() >= 1 and per_image.max() <= synth.MAX_OBJECTS
    assert per_image.max() >= 10  # crowded images do occur


def test_every_class_and_size_range_present(val300_coco):
    anns = val300_coco["annotations"]
    counts = np.bincount([a["category_id"] - 1 for a in anns], minlength=6)
    assert (counts >= 0.1 * len(anns)).all(), counts  # roughly balanced: each class near 1/6
    longest_side = np.array([max(a["bbox"][2], a["bbox"][3]) for a in anns])
    assert (longest_side <= 8).sum() >= 20      # tiny objects
    assert (longest_side >= 70).sum() >= 20     # large objects
    assert longest_side.max() <= synth.MAX_OBJECT_SIZE + 1e-6


def test_occlusion_present_and_bounded(val300_coco):
    visible = np.array([a["visible_fraction"] for a in val300_coco["annotations"]])
    assert visible.min() >= synth.MIN_VISIBLE_FRACTION - 1e-3  # drop rule: at most 60 % covered
    assert (visible < 0.9).mean() > 0.05                        # but overlap does happen


@pytest.mark.parametrize("label", range(len(synth.CLASS_NAMES)))
def test_box_is_the_rendered_extent(label):
    """The analytic box agrees with the rasterised coverage to within a pixel on every side."""
    rng = np.random.default_rng(label)
    for _ in range(40):
        size = math.exp(rng.uniform(math.log(6), math.log(90)))
        geometry = synth._shape_geometry(label, size, rng)
        cx, cy = rng.uniform(50, 110, 2)
        alpha, x0, y0 = synth._rasterize(geometry, cx, cy)
        rows, cols = np.nonzero(alpha > 0)
        min_x, min_y, max_x, max_y = synth._extent(geometry)
        box = np.array([cx + min_x, cy + min_y, cx + max_x, cy + max_y])
        covered = np.array([x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1])
        # Coverage never leaves the box's pixels ...
        assert covered[0] >= math.floor(box[0]) and covered[1] >= math.floor(box[1])
        assert covered[2] <= math.ceil(box[2]) and covered[3] <= math.ceil(box[3])
        # ... and reaches to within a pixel of each side.
        assert np.all(np.abs(covered - box) <= 1.0), (label, size, covered, box)


def test_cli_writes_and_refuses_to_clobber(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synth.main(["--out", str(out), "--split", "val", "--seed", "1", "--num-images", "2", "--no-progress"]) == 0
    assert len(list((out / "images").glob("*.jpg"))) == 2
    assert synth.main(["--out", str(out), "--split", "val", "--seed", "1", "--num-images", "2", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert synth.main(["--out", str(out), "--split", "val", "--seed", "2", "--num-images", "3",
                       "--no-progress", "--overwrite"]) == 0
    assert len(list((out / "images").glob("*.jpg"))) == 3
    (out / "notes.txt").write_text("mine")
    assert synth.main(["--out", str(out), "--split", "val", "--seed", "2", "--num-images", "1",
                       "--no-progress", "--overwrite"]) == 2
    assert (out / "notes.txt").exists()


def _analytic_area(geometry) -> float:
    if isinstance(geometry, synth._Annulus):
        return math.pi * (geometry.outer_radius ** 2 - geometry.inner_radius ** 2)
    x, y = geometry.vertices.T  # shoelace formula (simple polygons: star and cross included)
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


@pytest.mark.parametrize("label", range(len(synth.CLASS_NAMES)))
def test_rendered_coverage_matches_shape_area(label):
    """Anti-aliased coverage sums to the analytic area: no outward / inward bias in rasterising."""
    rng = np.random.default_rng(100 + label)
    relative_errors = []
    for _ in range(60):
        geometry = synth._shape_geometry(label, math.exp(rng.uniform(math.log(6), math.log(90))), rng)
        alpha, _, _ = synth._rasterize(geometry, *rng.uniform(50, 110, 2))
        area = _analytic_area(geometry)
        relative_errors.append((float(alpha.sum()) - area) / area)
    assert abs(np.mean(relative_errors)) < 0.01
    assert np.max(np.abs(relative_errors)) < 0.1


def test_is_current_tells_a_folder_from_an_earlier_generator_revision(tmp_path):
    folder = synth.generate(tmp_path / "v", "val", seed=3, num_images=5, progress=False)
    assert synth.is_current(folder, "val", 3)
    assert not synth.is_current(folder, "val", 4)      # other seed
    assert not synth.is_current(folder, "train", 3)    # other split
    # An earlier revision drew other boxes under the same info: move one box of the last image.
    path = folder / "annotations" / "instances.json"
    coco = json.loads(path.read_text())
    last_id = coco["images"][-1]["id"]
    ann = next(a for a in coco["annotations"] if a["image_id"] == last_id)
    ann["bbox"][0] += 0.5
    path.write_text(json.dumps(coco))
    assert not synth.is_current(folder, "val", 3)
    path.write_text("{not json")
    assert not synth.is_current(folder, "val", 3)
    assert not synth.is_current(tmp_path / "missing", "val", 3)


def test_train_fixtures_regenerates_a_stale_split(tmp_path, monkeypatch):
    train_fixtures = load_tool("train_fixtures", monkeypatch)

    folder = synth.generate(tmp_path / "val-seed2", "val", seed=2, num_images=4, progress=False)
    fresh = json.loads((folder / "annotations" / "instances.json").read_text())
    stale = json.loads(json.dumps(fresh))
    stale["annotations"][0]["bbox"][1] += 1.0
    (folder / "annotations" / "instances.json").write_text(json.dumps(stale))
    dataset = train_fixtures.ensure_split(tmp_path, "val", 2, 4)
    assert json.loads((folder / "annotations" / "instances.json").read_text()) == fresh
    assert len(dataset.items) == 4
