"""Dataset classes are mapped onto the model's classes BY NAME (issue 13, "Datasets mapped by id").

A COCO json whose category ids are permuted, a YOLO classes.txt in another order, real COCO ids
(1..90 with gaps): all score exactly what the canonical dataset scores. Names that match no model
class are an error naming each of them (or the user maps them with --class-map FILE); a YOLO
dataset without any class names is mapped by index, with one warning line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.cli import main
from edgekit.validate import synth
from edgekit.validate.datasets import DatasetError, load_class_map, load_dataset, map_to_model_classes
from tests.conftest import FASTESTDET_DIR, SHARED_DIR, ZOO_DIR

COCO8_DIR = SHARED_DIR / "datasets" / "coco8"
#: the 80 COCO category ids (1..90 with gaps), in the order of the 80 class names
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
            33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
            60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]
#: the darknet coco.names spellings (FastestDet, ultralytics' coco8 checkpoints) vs COCO's own names
VOC_SPELLINGS = {"motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa", "potted plant": "pottedplant",
                 "dining table": "diningtable", "tv": "tvmonitor"}


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _labels_by_file(dataset) -> dict[str, list[tuple]]:
    """file name -> sorted (label, rounded box) pairs: what a class mapping must preserve."""
    return {item.file_name: sorted((int(lb), *np.round(b, 2).tolist()) for b, lb in zip(item.boxes, item.labels))
            for item in dataset.items}


# --- synthetic data + the bundled yolov8 fixture: permutations must not change the mAP ---------------


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("mapping") / "val", "val", seed=0, num_images=40, progress=False)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    from edgekit.convert.chain import export_artifact
    from edgekit.models.loading import load_checkpoint

    out = tmp_path_factory.mktemp("mapping_art") / "yolov8"
    export_artifact(load_checkpoint(ZOO_DIR / "yolov8.pt"), out)
    return out


def _permuted_coco(val_dir: Path, out: Path, permutation: dict[int, int]) -> Path:
    """The same COCO dataset with category ids renumbered (names unchanged) and no YOLO files."""
    shutil.copytree(val_dir, out)
    shutil.rmtree(out / "labels")
    (out / "classes.txt").unlink()
    path = out / "annotations" / "instances.json"
    data = json.loads(path.read_text())
    for category in data["categories"]:
        category["id"] = permutation[category["id"]]
    for ann in data["annotations"]:
        ann["category_id"] = permutation[ann["category_id"]]
    path.write_text(json.dumps(data))
    return out


def _reordered_yolo(val_dir: Path, out: Path, order: list[int]) -> Path:
    """The same YOLO dataset with classes.txt in another order and every label line renumbered to match."""
    shutil.copytree(val_dir, out)
    shutil.rmtree(out / "annotations")
    names = (out / "classes.txt").read_text().split("\n")[:-1]
    (out / "classes.txt").write_text("".join(names[k] + "\n" for k in order))
    new_index = {old: new for new, old in enumerate(order)}
    for label in (out / "labels").glob("*.txt"):
        lines = [line.split() for line in label.read_text().splitlines() if line.strip()]
        label.write_text("".join(" ".join([str(new_index[int(f[0])]), *f[1:]]) + "\n" for f in lines))
    return out


def _map_of(out: str) -> float:
    row = next(line for line in out.splitlines() if line.startswith("| onnxruntime/fp32"))
    return float(row.split("|")[2])


def test_permuted_coco_ids_and_reordered_yolo_names_give_the_same_map(artifact, val_dir, tmp_path, capsys):
    code, out, err = run_cli(["validate", artifact, "--data", val_dir], capsys)
    assert code == 0, err
    canonical = _map_of(out)
    assert canonical > 0.3  # a trained model: a wrong mapping would show

    permuted = _permuted_coco(val_dir, tmp_path / "permuted", {1: 4, 2: 6, 3: 1, 4: 5, 5: 2, 6: 3})
    code, out, err = run_cli(["validate", artifact, "--data", permuted], capsys)
    assert code == 0, err
    assert _map_of(out) == canonical
    assert "warning" not in err

    reordered = _reordered_yolo(val_dir, tmp_path / "reordered", [3, 5, 0, 1, 4, 2])
    code, out, err = run_cli(["validate", artifact, "--data", reordered], capsys)
    assert code == 0, err
    assert _map_of(out) == canonical


def test_unknown_names_are_one_error_line_and_class_map_fixes_them(artifact, val_dir, tmp_path, capsys):
    renamed = _reordered_yolo(val_dir, tmp_path / "renamed", [0, 1, 2, 3, 4, 5])
    (renamed / "classes.txt").write_text("circles\nsquare\ntriangle\nstar\ndonut\ncross\n")
    code, out, err = run_cli(["validate", artifact, "--data", renamed], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "'circles' (did you mean 'circle'?)" in lines[0] and "'donut'" in lines[0], lines[0]
    assert "--class-map" in lines[0]

    class_map = tmp_path / "map.txt"
    class_map.write_text("# dataset name<TAB>model name\ncircles\tcircle\ndonut\tring\n")
    code, out, err = run_cli(["validate", artifact, "--data", renamed, "--class-map", class_map], capsys)
    assert code == 0, err
    code, canonical_out, err = run_cli(["validate", artifact, "--data", val_dir], capsys)
    assert _map_of(out) == _map_of(canonical_out)


def test_yolo_labels_without_any_names_map_by_index_with_one_warning(artifact, val_dir, tmp_path, capsys):
    unnamed = _reordered_yolo(val_dir, tmp_path / "unnamed", [0, 1, 2, 3, 4, 5])
    (unnamed / "classes.txt").unlink()
    code, out, err = run_cli(["validate", artifact, "--data", unnamed], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no class names" in warnings[0] and "by index" in warnings[0], err
    code, canonical_out, _ = run_cli(["validate", artifact, "--data", val_dir], capsys)
    assert _map_of(out) == _map_of(canonical_out)


# --- the mapping itself, on in-memory and shared datasets ---------------------------------------------


def test_unnamed_label_beyond_the_model_is_an_error(val_dir, tmp_path):
    unnamed = _reordered_yolo(val_dir, tmp_path / "unnamed", [0, 1, 2, 3, 4, 5])
    (unnamed / "classes.txt").unlink()
    dataset = load_dataset(unnamed)
    with pytest.raises(DatasetError, match="class index 5 .* the model has 3 classes"):
        map_to_model_classes(dataset, ("a", "b", "c"))


def test_duplicate_model_names_are_ambiguous(val_dir):
    dataset = load_dataset(val_dir, layout="yolo")
    names = list(dataset.class_names)
    with pytest.raises(DatasetError, match="'circle'.*more than once"):
        map_to_model_classes(dataset, (*names, "circle"))


def test_model_classes_absent_from_the_dataset_are_fine(val_dir):
    dataset = load_dataset(val_dir, layout="yolo")
    model_names = ("person", *reversed(dataset.class_names), "car")
    mapped = map_to_model_classes(dataset, model_names)
    assert mapped.class_names == model_names
    for before, after in zip(dataset.items, mapped.items):
        assert [model_names[k] for k in after.labels] == [dataset.class_names[k] for k in before.labels]
        np.testing.assert_array_equal(before.boxes, after.boxes)


@pytest.mark.parametrize("text, fragment", [
    ("{\"a\": 3}", "must map names to names"),
    ("[1, 2]", "expected a JSON object"),
    ("{bad json", "malformed JSON"),
])
def test_bad_json_class_map(tmp_path, text, fragment):
    path = tmp_path / "map.json"
    path.write_text(text)
    with pytest.raises(DatasetError, match=fragment):
        load_class_map(path)


def test_bad_text_class_map(tmp_path):
    path = tmp_path / "map.txt"
    path.write_text("a\tb\nmotorcycle motorbike\n")
    with pytest.raises(DatasetError, match=r"map.txt:2: .*expected 'dataset name<TAB>model name'"):
        load_class_map(path)
    path.write_text("a\tb\na\tc\n")
    with pytest.raises(DatasetError, match=r"map.txt:2: 'a' is mapped twice"):
        load_class_map(path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_class_map(tmp_path / "nope.txt")


def test_class_map_entry_naming_no_model_class_is_an_error(val_dir):
    dataset = load_dataset(val_dir, layout="yolo")
    with pytest.raises(DatasetError, match="class map maps 'circle' to 'disc', which is not a model class"):
        map_to_model_classes(dataset, dataset.class_names, {"circle": "disc"})


@pytest.fixture(scope="module")
def coco8() -> Path:
    if not (COCO8_DIR / "data.yaml").is_file():
        pytest.skip("../shared/datasets/coco8 is not present")
    return COCO8_DIR


def _darknet_names() -> tuple[str, ...]:
    if not (FASTESTDET_DIR / "coco.names").is_file():
        pytest.skip("../shared/models/fastestdet is not present")
    return tuple(n.strip() for n in (FASTESTDET_DIR / "coco.names").read_text().splitlines() if n.strip())


def test_darknet_coco_names_on_coco8_name_exactly_the_mismatches(coco8, tmp_path):
    model_names = _darknet_names()
    dataset = load_dataset(coco8)
    assert len(dataset.class_names) == len(model_names) == 80
    with pytest.raises(DatasetError) as info:
        map_to_model_classes(dataset, model_names)
    message = str(info.value)
    assert "\n" not in message
    unmatched = [name for name in dataset.class_names if name not in model_names]
    assert sorted(unmatched) == sorted(VOC_SPELLINGS)
    for name in unmatched:
        assert repr(name) in message
    assert "'motorcycle' (did you mean 'motorbike'?)" in message
    assert "'airplane' (did you mean 'aeroplane'?)" in message
    assert "6 of the dataset's 80 class names" in message

    class_map = tmp_path / "darknet.json"
    class_map.write_text(json.dumps(VOC_SPELLINGS))
    mapped = map_to_model_classes(dataset, model_names, load_class_map(class_map))
    # both lists are in COCO's order, so the mapped labels are the dataset's own indices
    assert _labels_by_file(mapped) == _labels_by_file(dataset)
    assert mapped.class_names == model_names


def test_real_coco_ids_with_gaps_map_onto_an_80_class_model(coco8, tmp_path):
    """coco8 written as a COCO json with the real category ids 1..90 (gaps), categories listed shuffled."""
    yolo = load_dataset(coco8)
    names = yolo.class_names
    rng = np.random.default_rng(0)
    order = rng.permutation(80)
    annotations = []
    for item in yolo.items:
        for box, label in zip(item.boxes.tolist(), item.labels.tolist()):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": item.image_id,
                                "category_id": COCO_IDS[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    data = {"images": [{"id": it.image_id, "file_name": it.file_name, "width": it.width, "height": it.height}
                       for it in yolo.items],
            "annotations": annotations,
            "categories": [{"id": COCO_IDS[k], "name": names[k]} for k in order]}
    json_path = tmp_path / "instances_coco8.json"
    json_path.write_text(json.dumps(data))
    # images/<split>/x.jpg: point the JSON's folder at the shared images through a symlink
    (tmp_path / "images").symlink_to(coco8 / "images")
    coco = load_dataset(json_path)
    assert coco.category_ids == tuple(sorted(COCO_IDS))
    mapped = map_to_model_classes(coco, names)
    assert mapped.class_names == names
    assert _labels_by_file(mapped) == _labels_by_file(yolo)
    # COCO ids survive the mapping: class k of the model is COCO id COCO_IDS[k]
    assert mapped.category_ids[: len(names)] == tuple(COCO_IDS)


def test_mapping_that_is_already_the_identity_returns_the_dataset(val_dir):
    dataset = load_dataset(val_dir, layout="coco")
    assert map_to_model_classes(dataset, dataset.class_names) is dataset
