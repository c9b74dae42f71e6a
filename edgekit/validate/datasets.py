"""Detection datasets on disk -> one in-memory form.

Two layouts are read:

- COCO: an instances JSON (``images``, ``annotations`` with ``bbox`` = [x, y, w, h] in pixels,
  ``categories``) plus an images folder. ``load_dataset`` takes the folder holding
  ``annotations/*.json`` or the path of the JSON itself. Class index ``k`` is the k-th category
  in ascending category id; ``Dataset.category_ids[k]`` maps back to the COCO id. Crowd
  annotations (``iscrowd: 1``) are kept apart, as ignore regions for COCO evaluation.
- YOLO (ultralytics / darknet): ``images/**/*.jpg|png|...`` and ``labels/**/*.txt`` at the same
  relative path, one object a line ``class cx cy w h`` (class 0-based, coordinates normalised to
  [0, 1] by the image width / height); ultralytics polygon lines ``class x1 y1 x2 y2 ...`` are
  read as the polygon's extent. Class names come from ``classes.txt`` (one a line, in the root
  or in ``labels/``) or from ``data.yaml`` / ``dataset.yaml`` ``names``; without any of them the
  dataset is unnamed (``Dataset.named`` False, names "0", "1", ...). A missing label file
  means an image with no objects. Image ids are 1..N in sorted relative-path order.

Everything in memory is xyxy float32 pixels with 0-based int64 labels. No torch here.

A dataset's class indices are its own; ``map_to_model_classes`` maps them onto a model's classes
BY NAME (optionally through a user's class map, ``load_class_map``) before anything is scored.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from edgekit.errors import EdgekitError, did_you_mean
from edgekit.filetypes import read_json
from edgekit.runtime.preprocess import IMAGE_SUFFIXES, open_image, upright_size
from edgekit.spec import check_class_names, load_class_names

# YOLO coordinates are normalised; allow a hair past [0, 1] for writers that round outward.
# COCO boxes (pixels) get the same 0.1 % of the image side, at least one pixel. Beyond that a box
# outside the image is refused, not clipped: a silently clipped ground truth changes the mAP.
_NORMALISED_SLACK = 1e-3


class DatasetError(EdgekitError):
    """A dataset folder, annotation file or label line is missing or malformed."""


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), np.float32)


def _empty_labels() -> np.ndarray:
    return np.zeros((0,), np.int64)


@dataclass(frozen=True)
class Annotation:
    """Ground truth of one image.

    boxes: float32 [N, 4], xyxy in image pixels. labels: int64 [N], 0-based class indices.
    crowd_boxes / crowd_labels: COCO ``iscrowd`` regions (float32 [M, 4] xyxy, int64 [M]);
    COCO evaluation ignores detections on them; they are not objects to count.
    """

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    crowd_boxes: np.ndarray = field(default_factory=_empty_boxes)
    crowd_labels: np.ndarray = field(default_factory=_empty_labels)


@dataclass(frozen=True)
class Dataset:
    """A detection dataset: class names, and one ``Annotation`` per image in a stable order.

    ``category_ids[k]`` is the COCO category id of class index ``k`` (1..K for YOLO layouts).
    ``named`` is False for a YOLO layout without classes.txt / data.yaml names: its class names
    are then just "0", "1", ... up to the largest label seen.
    """

    root: Path
    image_dir: Path
    class_names: tuple[str, ...]
    items: tuple[Annotation, ...]
    category_ids: tuple[int, ...]
    layout: str = "coco"
    named: bool = True
    splits: tuple[str, ...] = ()  # a YOLO layout's data.yaml splits (train, val, test) that name a folder of images/
    split: str | None = None      # the one loaded (``load_dataset(split=...)``); None: every image under images/

    def image_path(self, item: Annotation) -> Path:
        return self.image_dir / item.file_name

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Annotation]:
        return iter(self.items)

    @property
    def num_objects(self) -> int:
        return sum(len(item.boxes) for item in self.items)


def load_dataset(path: str | Path, layout: Literal["auto", "coco", "yolo"] = "auto",
                 split: str | None = None) -> Dataset:
    """Read a COCO or YOLO layout dataset.

    ``path``: a folder with ``annotations/*.json`` (COCO), the COCO JSON itself, or a folder with
    ``images/`` and ``labels/`` (YOLO). ``layout="auto"`` prefers COCO when a folder has both.
    ``split``: a YOLO layout's data.yaml split (``val: images/val``): only its images; None: every image under
    images/ (``Dataset.splits`` says which splits the yaml names).
    Raises ``DatasetError`` with one line naming the file and what was expected.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset {path} does not exist; expected a COCO layout (annotations/*.json + images/), "
                           "a COCO instances .json, or a YOLO layout (images/ + labels/)")
    if layout not in ("auto", "coco", "yolo"):
        raise DatasetError(f"dataset layout {layout!r}: expected 'auto', 'coco' or 'yolo'")
    if split is not None:
        if path.is_file() or (_find_coco_json(path) is not None and layout != "yolo"):
            raise DatasetError(f"--split {split}: applies to a YOLO layout whose data.yaml names its splits; {path} "
                               "is a COCO dataset (its JSON is the split)")
        if not ((path / "images").is_dir() and (path / "labels").is_dir()):
            raise DatasetError(f"dataset {path}: expected a YOLO layout with images/ and labels/ folders (--split)")
        return _load_yolo(path, split)
    if path.is_file():
        if path.suffix.lower() != ".json" or layout == "yolo":
            raise DatasetError(f"dataset {path} is a file; expected a COCO instances .json or a dataset folder")
        return _load_coco(path)
    coco_json = _find_coco_json(path) if layout in ("auto", "coco") else None
    if coco_json is not None:
        return _load_coco(coco_json)
    if layout in ("auto", "yolo") and (path / "images").is_dir() and (path / "labels").is_dir():
        return _load_yolo(path)
    if layout == "coco":
        raise DatasetError(f"dataset {path}: no annotations/*.json found; expected a COCO layout")
    if layout == "yolo":
        raise DatasetError(f"dataset {path}: expected a YOLO layout with images/ and labels/ folders")
    raise DatasetError(f"dataset {path}: neither annotations/*.json (COCO) nor images/ + labels/ (YOLO) found")


# ---------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------

def _find_coco_json(folder: Path) -> Path | None:
    ann_dir = folder / "annotations"
    if not ann_dir.is_dir():
        return None
    candidates = sorted(ann_dir.glob("*.json"))
    if len(candidates) > 1:
        # e.g. instances_val2017.json next to captions_* / person_keypoints_*.
        candidates = [p for p in candidates if p.name.startswith("instances")] or candidates
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise DatasetError(f"dataset {folder}: several annotation files ({names}); pass the path of the one to use")
    return candidates[0] if candidates else None


def _coco_image_dir(json_path: Path, first_file: str) -> Path:
    """Where the images of a COCO JSON live.

    Tried in order: <root>/images, <root>/<split> for instances_<split>.json (the COCO 2017
    layout), <root>/images/<split>, the JSON's own folder, where <root> is the parent of an
    ``annotations`` folder holding the JSON (else the JSON's folder). The first that holds the
    first listed image wins.
    """
    root = json_path.parent.parent if json_path.parent.name == "annotations" else json_path.parent
    split = json_path.stem.split("_", 1)[1] if "_" in json_path.stem else None
    candidates = [root / "images"]
    if split:
        candidates += [root / split, root / "images" / split]
    candidates += [json_path.parent]
    for folder in candidates:
        if (folder / first_file).is_file():
            return folder
    for folder in candidates:
        if folder.is_dir() and folder != json_path.parent:
            return folder  # the missing-image check then names the first missing file
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"{json_path}: image {first_file} not found; looked in {tried}")


def _require(entry: object, keys: tuple[str, ...], where: str) -> dict:
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected an object with {', '.join(keys)}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DatasetError(f"{where}: missing {', '.join(missing)}")
    return entry


def _integer(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DatasetError(f"{where}: {value!r}; expected an integer")
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(f"{where}: {value!r}; expected an integer") from None
    if not number.is_integer():
        raise DatasetError(f"{where}: {value!r}; expected an integer")
    return int(number)


def _load_coco(json_path: Path) -> Dataset:
    data = read_json(json_path, DatasetError, "COCO annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise DatasetError(f"{json_path}: expected a COCO instances object with 'images' and 'categories' lists")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DatasetError(f"{json_path}: 'annotations' must be a list")
    if not data["images"]:
        raise DatasetError(f"{json_path}: no images listed; expected at least one entry in 'images'")

    categories = [_require(c, ("id", "name"), f"{json_path}: categories[{i}]") for i, c in enumerate(data["categories"])]
    if not categories:
        raise DatasetError(f"{json_path}: no categories; expected at least one entry in 'categories'")
    for i, c in enumerate(categories):
        _integer(c["id"], f"{json_path}: categories[{i}].id")
    categories.sort(key=lambda c: int(c["id"]))
    category_ids = tuple(int(c["id"]) for c in categories)
    if len(set(category_ids)) != len(category_ids):
        raise DatasetError(f"{json_path}: duplicate category ids in 'categories'")
    for c in categories:
        if isinstance(c["name"], bool) or not isinstance(c["name"], (str, int)):
            raise DatasetError(f"{json_path}: category id {c['id']}: name {c['name']!r}; expected a string")
    check_class_names([str(c["name"]) for c in categories], str(json_path),
                      [f"{json_path}: category id {c['id']}" for c in categories], error=DatasetError)
    class_index = {cid: k for k, cid in enumerate(category_ids)}

    images = [_require(im, ("id", "file_name", "width", "height"), f"{json_path}: images[{i}]")
              for i, im in enumerate(data["images"])]
    image_ids = [_integer(im["id"], f"{json_path}: images[{i}].id") for i, im in enumerate(images)]
    if len(set(image_ids)) != len(image_ids):
        raise DatasetError(f"{json_path}: duplicate image ids in 'images'")

    per_image: dict[int, tuple[list, list, list, list]] = {iid: ([], [], [], []) for iid in image_ids}
    image_sizes: dict[int, tuple[float, float]] = {}
    for i, im in enumerate(images):
        size = (im["width"], im["height"])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                   for v in size):
            raise DatasetError(f"{json_path}: images[{i}]: width/height {list(size)!r}; expected positive numbers")
        image_sizes[int(im["id"])] = (float(size[0]), float(size[1]))
    for i, ann in enumerate(annotations):
        where = f"{json_path}: annotations[{i}]"
        _require(ann, ("image_id", "category_id", "bbox"), where)
        if ann["image_id"] not in per_image:
            raise DatasetError(f"{where}: image_id {ann['image_id']} is not in 'images'")
        if ann["category_id"] not in class_index:
            raise DatasetError(f"{where}: category_id {ann['category_id']} is not in 'categories'")
        bbox = ann["bbox"]
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
            raise DatasetError(f"{where}: bbox {bbox!r}; expected [x, y, width, height] of 4 finite numbers")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise DatasetError(f"{where}: bbox {bbox!r} has zero or negative width or height; expected a box of "
                               "positive area")
        width, height = image_sizes[ann["image_id"]]
        slack_x, slack_y = max(1.0, _NORMALISED_SLACK * width), max(1.0, _NORMALISED_SLACK * height)
        if x < -slack_x or y < -slack_y or x + w > width + slack_x or y + h > height + slack_y:
            raise DatasetError(f"{where}: bbox {bbox!r} reaches outside its {width}x{height} image; expected "
                               "0 <= x, x + width <= image width (same for y)")
        boxes, labels, crowd_boxes, crowd_labels = per_image[ann["image_id"]]
        target_boxes, target_labels = (crowd_boxes, crowd_labels) if ann.get("iscrowd", 0) else (boxes, labels)
        target_boxes.append((x, y, x + w, y + h))
        target_labels.append(class_index[ann["category_id"]])

    image_dir = _coco_image_dir(json_path, str(images[0]["file_name"]))
    missing = [str(im["file_name"]) for im in images if not (image_dir / str(im["file_name"])).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"{json_path}: image {image_dir / missing[0]} is listed but missing{more}")
    for i, im in enumerate(images):
        _check_coco_image_size(json_path, i, image_dir / str(im["file_name"]), image_sizes[int(im["id"])])

    items = tuple(
        Annotation(
            image_id=int(im["id"]), file_name=str(im["file_name"]), width=int(im["width"]), height=int(im["height"]),
            boxes=np.asarray(b, np.float32).reshape(-1, 4), labels=np.asarray(lb, np.int64).reshape(-1),
            crowd_boxes=np.asarray(cb, np.float32).reshape(-1, 4), crowd_labels=np.asarray(cl, np.int64).reshape(-1),
        )
        for im in images
        for b, lb, cb, cl in [per_image[int(im["id"])]]
    )
    root = json_path.parent.parent if json_path.parent.name == "annotations" else json_path.parent
    return Dataset(root=root, image_dir=image_dir, class_names=tuple(str(c["name"]) for c in categories),
                   items=items, category_ids=category_ids, layout="coco")


def _check_coco_image_size(json_path: Path, index: int, image_path: Path, listed: tuple[float, float]) -> None:
    """The boxes are pixels of a ``width`` x ``height`` image: the file must be that image, as the detector sees it
    (EXIF orientation applied), or every box is scored at the wrong scale."""
    try:
        with open_image(image_path, str(image_path)) as im:  # the header only
            stored, upright = im.size, upright_size(im)
    except EdgekitError:
        raise
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{image_path}: cannot read image header: {exc}") from None
    if upright == listed:
        return
    where = f"{json_path}: images[{index}] ({image_path.name}) says {listed[0]:g}x{listed[1]:g}"
    if stored == listed:
        raise DatasetError(f"{where}, the size of its stored pixels, but its EXIF orientation turns it to "
                           f"{upright[0]}x{upright[1]} as displayed and detected; annotate the upright image (or "
                           "save it without the EXIF rotation)")
    raise DatasetError(f"{where} but the file is {upright[0]}x{upright[1]}; its boxes are pixels of the listed size "
                       "(was the image resized after annotation?)")


# ---------------------------------------------------------------------------------------------
# YOLO
# ---------------------------------------------------------------------------------------------

def _parse_yaml_names(yaml_path: Path) -> list[str] | None:
    """``names`` from a data.yaml: ``[a, b]``, a block list ``- a`` or a mapping ``0: a``.

    Uses PyYAML when installed; otherwise reads just these three common forms.
    """
    try:
        text = yaml_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{yaml_path}: cannot read as UTF-8 text ({exc})") from None
    try:
        import yaml  # optional dependency
    except ImportError:
        names = _names_without_yaml(text)
        pose = re.search(r"^kpt_shape\s*:", text, re.MULTILINE) is not None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DatasetError(f"{yaml_path}: malformed YAML: {' '.join(str(exc).split())}") from None
        names = data.get("names") if isinstance(data, dict) else None
        pose = isinstance(data, dict) and "kpt_shape" in data
    if pose:
        # a pose line is 'class cx cy w h' then the keypoints: read as a polygon, its extent is the keypoints' box
        raise DatasetError(f"{yaml_path}: a pose dataset (kpt_shape); its label lines carry keypoints after the box, "
                           "which a detection dataset's reader would take for a polygon; expected detection labels "
                           "('class cx cy w h')")
    if names is None:
        return None
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DatasetError(f"{yaml_path}: 'names' mapping keys must be class indices 0..K-1") from None
        if keys != list(range(len(keys))):
            raise DatasetError(f"{yaml_path}: 'names' mapping keys must be 0..{len(keys) - 1} without gaps")
        return [str(names[k] if k in names else names[str(k)]) for k in keys]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise DatasetError(f"{yaml_path}: 'names' must be a list or a mapping of class index to name")


def _names_without_yaml(text: str) -> list | dict | None:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^names\s*:\s*(.*?)\s*(#.*)?$", line)
        if not match:
            continue
        inline = match.group(1)
        if inline:
            try:
                return ast.literal_eval(inline)  # "[a, b]" only parses when quoted; fall back below
            except (ValueError, SyntaxError):
                if inline.startswith("[") and inline.endswith("]"):
                    return [n.strip().strip("'\"") for n in inline[1:-1].split(",") if n.strip()]
                return None
        block: dict | list | None = None
        for item in lines[i + 1:]:
            if not item.strip() or item.lstrip().startswith("#"):
                continue
            if not item.startswith((" ", "\t", "-")):
                break
            entry = item.split("#", 1)[0].strip()
            list_item = re.match(r"^-\s*(.+)$", entry)
            map_item = re.match(r"^(\d+)\s*:\s*(.+)$", entry)
            if list_item:
                block = block if isinstance(block, list) else []
                block.append(list_item.group(1).strip().strip("'\""))
            elif map_item:
                block = block if isinstance(block, dict) else {}
                block[int(map_item.group(1))] = map_item.group(2).strip().strip("'\"")
        return block
    return None


def _yolo_class_names(root: Path) -> list[str] | None:
    """Names from classes.txt or data.yaml / dataset.yaml; None when the dataset has none of them.

    Both present must agree: which one a label index means is otherwise a guess (a swapped pair of names moves
    every box of those classes to the other class, and the mAP with them)."""
    listed: list[str] | None = None
    for classes_txt in (root / "classes.txt", root / "labels" / "classes.txt"):
        if classes_txt.is_file():
            listed = list(load_class_names(classes_txt))  # one reader for names files: UTF-8, unique, no control chars
            break
    yaml_path = _data_yaml(root)
    if yaml_path is None:
        return listed
    names = _parse_yaml_names(yaml_path)
    if names:
        check_class_names(names, f"{yaml_path}: 'names'", error=DatasetError)
    if listed is not None and names and names != listed:
        k = next((k for k, (a, b) in enumerate(zip(listed, names)) if a != b), min(len(listed), len(names)))
        first = (f"class {k} is {listed[k]!r} in one and {names[k]!r} in the other"
                 if k < min(len(listed), len(names)) else f"{len(listed)} against {len(names)} names")
        raise DatasetError(f"{classes_txt} and {yaml_path} disagree ({first}); keep one of them, or make them the "
                           "same list")
    if listed is not None:
        return listed
    if names:
        return names
    raise DatasetError(f"{yaml_path}: no 'names'; expected names: [class0, class1, ...]")


def _data_yaml(root: Path) -> Path | None:
    """A YOLO layout's dataset description: ``data.yaml``, else ``dataset.yaml``; None when it has neither."""
    return next((root / name for name in ("data.yaml", "dataset.yaml") if (root / name).is_file()), None)


def _read_yolo_labels(label_path: Path, num_classes: int | None, width: int,
                      height: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse one label file -> (boxes float32 [N, 4] xyxy pixels, labels int64 [N]).

    ``num_classes`` None (an unnamed dataset): any non-negative integer class is accepted.
    """
    boxes, labels = [], []
    try:
        text = label_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{label_path}: cannot read as UTF-8 text ({exc})") from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_path}:{line_no}"
        # 5 fields: a box. 1 + 2k fields with k >= 3: an ultralytics polygon, read as its extent.
        if len(fields) != 5 and not (len(fields) >= 7 and len(fields) % 2 == 1):
            raise DatasetError(f"{where}: {len(fields)} fields; expected 5 ('class cx cy w h')")
        try:
            cls_value = float(fields[0])
            values = np.array([float(v) for v in fields[1:]], np.float64)
        except ValueError:
            raise DatasetError(f"{where}: {line.strip()!r} is not numeric; expected 'class cx cy w h'") from None
        if num_classes is None and (not cls_value.is_integer() or cls_value < 0):
            raise DatasetError(f"{where}: class {fields[0]}; expected a non-negative integer class index")
        if num_classes is not None and (not cls_value.is_integer() or not 0 <= cls_value < num_classes):
            raise DatasetError(f"{where}: class {fields[0]} out of range; expected an integer in 0..{num_classes - 1}")
        if not np.all(np.isfinite(values)) or values.min() < -_NORMALISED_SLACK or values.max() > 1 + _NORMALISED_SLACK:
            raise DatasetError(f"{where}: coordinates {fields[1:]} not normalised; expected values in [0, 1]")
        if len(fields) == 5:
            cx, cy, w, h = values
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        else:
            xs, ys = values[0::2], values[1::2]
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max(), ys.max()
        if not (x2 > x1 and y2 > y1):
            raise DatasetError(f"{where}: box {fields[1:]} has zero width or height; expected a box of positive area")
        if min(x1, y1) < -_NORMALISED_SLACK or max(x2, y2) > 1 + _NORMALISED_SLACK:
            raise DatasetError(f"{where}: box {fields[1:]} reaches outside the image (x {x1:.4f}..{x2:.4f}, "
                               f"y {y1:.4f}..{y2:.4f}); expected cx +- w/2 and cy +- h/2 within [0, 1]")
        boxes.append((x1 * width, y1 * height, x2 * width, y2 * height))
        labels.append(int(cls_value))
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64).reshape(-1)


def _yolo_splits(root: Path) -> dict[str, Path]:
    """data.yaml's ``train`` / ``val`` / ``test`` entries that name a folder inside ``images/`` (Ultralytics: relative
    to the yaml's ``path``, itself relative to the dataset folder). A list of folders or a .txt list is not read."""
    yaml_path = _data_yaml(root)
    if yaml_path is None:
        return {}
    try:
        text = yaml_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}  # _yolo_class_names reports an unreadable yaml
    entries = {key: value.strip().strip("'\"") for key, value in
               re.findall(r"^(path|train|val|test)\s*:\s*([^#\n]*?)\s*(?:#.*)?$", text, re.MULTILINE)}
    base = Path(entries.get("path") or ".")
    base = base if base.is_absolute() else root / base
    images = (root / "images").resolve()
    found = {}
    for name in ("train", "val", "test"):
        value = entries.get(name)
        if not value or value.startswith("["):
            continue
        folder = (base / value).resolve()
        if folder.is_dir() and (folder == images or images in folder.parents):
            found[name] = folder
    return found


def _load_yolo(root: Path, split: str | None = None) -> Dataset:
    image_dir, label_dir = root / "images", root / "labels"
    class_names = _yolo_class_names(root)
    splits = _yolo_splits(root)
    scan, labels_scan = image_dir, label_dir
    if split is not None:
        if split not in splits:
            available = ", ".join(f"{name}: {folder.relative_to(image_dir.resolve().parent)}"
                                  for name, folder in splits.items()) or "none that is a folder of images/"
            raise DatasetError(f"YOLO dataset {root}: --split {split}: its data.yaml names {available}")
        relative = splits[split].relative_to(image_dir.resolve())
        scan, labels_scan = image_dir / relative, label_dir / relative
    image_paths = sorted(p for p in scan.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not image_paths:
        raise DatasetError(f"YOLO dataset {root}: no images in {scan}; expected "
                           f"{', '.join(sorted(IMAGE_SUFFIXES))} files")
    items = []
    for image_id, image_path in enumerate(image_paths, start=1):
        relative = image_path.relative_to(image_dir)
        try:
            with open_image(image_path, str(image_path)) as im:  # reads the header only, not the pixels
                # normalised labels refer to the image as displayed (EXIF orientation applied), as the detector
                # sees it (load_image) and as Ultralytics reads them
                width, height = upright_size(im)
        except EdgekitError:
            raise
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{image_path}: cannot read image header: {exc}") from None
        label_path = label_dir / relative.with_suffix(".txt")
        if label_path.is_file():
            boxes, labels = _read_yolo_labels(label_path, len(class_names) if class_names is not None else None,
                                              width, height)
        else:
            boxes, labels = _empty_boxes(), _empty_labels()
        items.append(Annotation(image_id=image_id, file_name=relative.as_posix(), width=width, height=height,
                                boxes=boxes, labels=labels))
    # a label file beside no image is a layout mistake (labels/x.txt for images/val/x.jpg): its boxes would silently
    # drop out of the mAP while its image scores as one without objects
    used = {label_dir / Path(item.file_name).with_suffix(".txt") for item in items}
    orphans = sorted(path for path in labels_scan.rglob("*.txt")
                     if path.is_file() and path.name != "classes.txt" and path not in used) if labels_scan.is_dir() else []
    if orphans:
        relative = orphans[0].relative_to(label_dir).with_suffix("")
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise DatasetError(f"YOLO dataset {root}: label file {orphans[0]} has no image{more}; expected its image at "
                           f"{image_dir / relative}.jpg (or another image suffix): labels/ must mirror images/")
    named = class_names is not None
    if class_names is None:
        # no names anywhere: the label indices are all there is (mapped onto a model by index, with a warning)
        seen = max((int(item.labels.max()) for item in items if len(item.labels)), default=-1)
        class_names = [str(k) for k in range(seen + 1)]
    return Dataset(root=root, image_dir=image_dir, class_names=tuple(class_names), items=tuple(items),
                   category_ids=tuple(range(1, len(class_names) + 1)), layout="yolo", named=named,
                   splits=tuple(splits), split=split)


# ---------------------------------------------------------------------------------------------
# Dataset classes -> model classes
# ---------------------------------------------------------------------------------------------

def load_class_map(path: str | Path) -> dict[str, str]:
    """A user's class map: dataset class name -> model class name.

    ``*.json``: one object ``{"motorcycle": "motorbike", ...}``. Any other file: one pair a line,
    ``dataset name<TAB>model name`` (names may contain spaces, so the separator is a tab); blank
    lines and lines starting with ``#`` are skipped. Raises ``DatasetError`` naming the file (and
    line) on anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"class map {path} does not exist; expected a JSON object or 'dataset name<TAB>model name' lines")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"class map {path}: cannot read: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"class map {path}: malformed JSON at line {exc.lineno} column {exc.colno}: "
                               f"{exc.msg}") from None
        if not isinstance(data, dict):
            raise DatasetError(f"class map {path}: expected a JSON object {{\"dataset name\": \"model name\", ...}}")
        bad = [k for k, v in data.items() if not isinstance(v, str) or not v.strip()]
        if bad:
            raise DatasetError(f"class map {path}: entry {bad[0]!r} must map names to names (a non-empty string)")
        return {str(k).strip(): v.strip() for k, v in data.items()}
    mapping: dict[str, str] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 2 or not all(fields):
            raise DatasetError(f"{path}:{line_no}: {line.strip()!r}; expected 'dataset name<TAB>model name'")
        if fields[0] in mapping:
            raise DatasetError(f"{path}:{line_no}: {fields[0]!r} is mapped twice")
        mapping[fields[0]] = fields[1]
    return mapping


def _suggest(name: str, choices: list[str]) -> str:
    """`'name' (did you mean 'x'?)` when a choice is close, else `'name'`."""
    hint = did_you_mean(name, choices)
    return f"{name!r} ({hint.removeprefix('; ')})" if hint else repr(name)


#: what a class-name mismatch tells the user to do, where the command has --class-map (validate)
CLASS_MAP_REMEDY = "or map them with --class-map FILE (JSON object or 'dataset name<TAB>model name' lines)"


def map_to_model_classes(dataset: Dataset, model_names: tuple[str, ...] | list[str],
                         class_map: dict[str, str] | None = None,
                         notice: Callable[[str], None] | None = None,
                         remedy: str = CLASS_MAP_REMEDY) -> Dataset:
    """The dataset with its labels renumbered into the model's class indices, matched BY NAME.

    Each dataset class name ``n`` becomes model class ``class_map.get(n, n)``. Model classes the
    dataset lacks are fine (they have no ground truth, hence no AP); a dataset name matching no
    model class is a ``DatasetError`` listing every such name (with a did-you-mean). An unnamed
    dataset (YOLO labels without classes.txt / data.yaml names) without a class map keeps its
    indices as model indices, and ``notice`` (default ``warnings.warn``) gets one line saying so.
    Returns ``dataset`` itself when the mapping is the identity; otherwise a copy whose
    ``class_names`` are ``model_names`` and whose ``category_ids[j]`` is the dataset's id of the
    class mapped to model class j (fresh ids above the dataset's for model-only classes).
    Boxes are untouched (xyxy float32 pixels); labels stay int64.
    """
    model_names = tuple(str(n) for n in model_names)
    where = f"dataset {dataset.root}"
    if not dataset.named and not class_map:
        if len(dataset.class_names) > len(model_names):
            raise DatasetError(f"{where}: labels use class index {len(dataset.class_names) - 1} but the model has "
                               f"{len(model_names)} classes; the dataset has no class names (add classes.txt) "
                               "to map them by name")
        message = (f"{where} has no class names (no classes.txt or data.yaml 'names'): its label indices are "
                   f"taken as the model's class indices by index (0 = {model_names[0]!r}"
                   f"{f', 1 = {model_names[1]!r}' if len(model_names) > 1 else ''}, ...); add classes.txt to map "
                   "by name") if model_names else f"{where} has no class names"
        if notice is None:
            import warnings

            warnings.warn(message, stacklevel=2)
        else:
            notice(message)
        labels = np.arange(len(dataset.class_names), dtype=np.int64)
        return _remapped(dataset, labels, model_names, list(range(1, len(model_names) + 1)))

    class_map = dict(class_map or {})
    if dataset.class_names == model_names and all(k == v for k, v in class_map.items()):
        return dataset
    unknown_keys = [k for k in class_map if k not in dataset.class_names]
    if unknown_keys:
        raise DatasetError(f"{where}: the class map names {', '.join(_suggest(k, list(dataset.class_names)) for k in unknown_keys)}, "
                           f"not a class of the dataset ({len(dataset.class_names)} classes)")
    model_index: dict[str, int] = {}
    duplicated = set()
    for j, name in enumerate(model_names):
        if name in model_index:
            duplicated.add(name)
        model_index.setdefault(name, j)
    targets = [class_map.get(name, name) for name in dataset.class_names]
    for name in dataset.class_names:
        if name in class_map and class_map[name] not in model_index:
            raise DatasetError(f"{where}: the class map maps {name!r} to {class_map[name]!r}, which is not a model "
                               f"class{_suggest(class_map[name], list(model_names)).removeprefix(repr(class_map[name]))}")
    ambiguous = sorted({t for t in targets if t in duplicated})
    if ambiguous:
        raise DatasetError(f"model class name {ambiguous[0]!r} appears more than once in the model's "
                           f"{len(model_names)} class names; a dataset class cannot be matched to it by name")
    unmatched = [name for name, target in zip(dataset.class_names, targets) if target not in model_index]
    if unmatched:
        taken = set(targets)
        free = [n for n in model_names if n not in taken]
        listed = ", ".join(_suggest(name, free) for name in unmatched)
        raise DatasetError(f"{where}: {len(unmatched)} of the dataset's {len(dataset.class_names)} class names match "
                           f"no class of the model ({len(model_names)} classes): {listed}; rename them in the dataset "
                           f"{remedy}")
    labels = np.array([model_index[t] for t in targets], np.int64)
    # COCO ids follow their class; model classes the dataset lacks get fresh ids above the dataset's.
    category_ids: list[int | None] = [None] * len(model_names)
    for k, j in enumerate(labels.tolist()):
        if category_ids[j] is None:
            category_ids[j] = dataset.category_ids[k]
    fresh = max(dataset.category_ids, default=0)
    for j, cid in enumerate(category_ids):
        if cid is None:
            fresh += 1
            category_ids[j] = fresh
    return _remapped(dataset, labels, model_names, category_ids)


def _remapped(dataset: Dataset, lookup: np.ndarray, model_names: tuple[str, ...], category_ids: list) -> Dataset:
    """``dataset`` with every label k replaced by ``lookup[k]`` (int64) and the model's class names."""
    from dataclasses import replace

    items = tuple(replace(item, labels=lookup[item.labels].astype(np.int64),
                          crowd_labels=lookup[item.crowd_labels].astype(np.int64)) for item in dataset.items)
    return replace(dataset, class_names=model_names, items=items, category_ids=tuple(int(c) for c in category_ids),
                   named=True)
