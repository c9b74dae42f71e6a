"""COCO box mAP with pycocotools.

The ground truth is built in memory from a ``Dataset`` (so YOLO layouts are scored exactly like
COCO ones) and detections are handed over as ``Detections`` per image id, boxes in original
image pixels. pycocotools does the matching and the 101-point interpolated AP:

    AP_t(class) = mean over r in {0, 0.01, ..., 1} of  max{ precision(r') : r' >= r }

at IoU thresholds t in {0.50, 0.55, ..., 0.95}; mAP@0.5:0.95 averages over t and over the
classes that have ground truth (a class with no ground-truth box has no AP and is left out,
as pycocotools does). Up to 100 detections per image count (the COCO default), highest scores
first. pycocotools' progress prints are silenced.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit.errors import InputError
from edgekit.runtime.detections import Detections
from edgekit.validate.datasets import Dataset, DatasetError

MAX_DETECTIONS_PER_IMAGE = 100


@dataclass(frozen=True)
class MapResult:
    """mAP@[.5:.95] and mAP@.5 over classes with ground truth; per-class AP keyed by class name.

    ``per_class_ap`` (AP@[.5:.95]) and ``per_class_ap_50`` hold only classes with at least one
    ground-truth box, so ``mean(per_class_ap.values()) == map_50_95``.
    """

    map_50_95: float
    map_50: float
    per_class_ap: dict[str, float]
    per_class_ap_50: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth of one image for ``coco_map``: boxes float32 [N, 4] xyxy pixels, labels int64 [N].

    crowd_boxes / crowd_labels: ignore regions (COCO ``iscrowd``), float32 [M, 4] / int64 [M].
    """

    boxes: np.ndarray
    labels: np.ndarray
    crowd_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    crowd_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    width: int = 0
    height: int = 0


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_map(ground_truth: Mapping[int, GroundTruth], detections: Mapping[int, Detections],
             class_names: tuple[str, ...] | list[str]) -> MapResult:
    """mAP of ``detections`` against ``ground_truth``, both keyed by image id, labels 0-based.

    Images in ``ground_truth`` missing from ``detections`` have no detections. A detection keyed
    by an image id not in ``ground_truth``, or with a label outside ``class_names``, is an
    ``InputError``. With no detections at all every class with ground truth scores AP 0.
    Raises ``DatasetError`` when there is no ground-truth box at all (mAP is undefined then).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    num_classes = len(class_names)
    # pycocotools treats annotation id 0 as "unmatched", so ids start at 1; so do category ids.
    gt_annotations: list[dict[str, Any]] = []
    for image_id, gt in ground_truth.items():
        for boxes, labels, crowd in ((gt.boxes, gt.labels, 0), (gt.crowd_boxes, gt.crowd_labels, 1)):
            for box, label in zip(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels).reshape(-1)):
                x, y, w, h = _xywh(box)
                gt_annotations.append({"id": len(gt_annotations) + 1, "image_id": int(image_id),
                                       "category_id": int(label) + 1, "bbox": [x, y, w, h],
                                       "area": w * h, "iscrowd": crowd})
    classes_with_gt = sorted({a["category_id"] - 1 for a in gt_annotations if not a["iscrowd"]})
    if not classes_with_gt:
        raise DatasetError("no ground-truth boxes in any image; mAP is undefined")

    results = []
    for image_id, dets in detections.items():
        if image_id not in ground_truth:
            raise InputError(f"detections for image id {image_id}, which is not in the dataset; "
                             "expected detections keyed by the dataset's image ids")
        if len(dets) and (dets.labels.min() < 0 or dets.labels.max() >= num_classes):
            raise InputError(f"detections for image id {image_id} have label {int(dets.labels.max())}; "
                             f"expected 0..{num_classes - 1}")
        for box, score, label in zip(dets.boxes.astype(np.float64), dets.scores.tolist(), dets.labels.tolist()):
            results.append({"image_id": int(image_id), "category_id": int(label) + 1,
                            "bbox": _xywh(box), "score": float(score)})

    per_class_ap = {class_names[k]: 0.0 for k in classes_with_gt}
    if not results:
        # pycocotools' loadRes cannot take an empty list; nothing detected means AP 0 everywhere.
        return MapResult(0.0, 0.0, per_class_ap, dict(per_class_ap))

    gt_dataset = {
        "images": [{"id": int(i), "width": int(g.width), "height": int(g.height)} for i, g in ground_truth.items()],
        "annotations": gt_annotations,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(class_names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.maxDets = [1, 10, MAX_DETECTIONS_PER_IMAGE]
        evaluator.evaluate()
        evaluator.accumulate()

    # precision: [T IoU thresholds, R=101 recall points, K classes, A area ranges, M maxDets];
    # area range 0 is "all", maxDets index -1 is 100. -1 marks "no ground truth" cells.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    iou_thresholds = evaluator.params.iouThrs
    at_50 = int(np.argmin(np.abs(iou_thresholds - 0.5)))
    per_class_ap_50 = {}
    for k in classes_with_gt:
        cells = precision[:, :, k]
        per_class_ap[class_names[k]] = float(cells.mean())
        per_class_ap_50[class_names[k]] = float(cells[at_50].mean())
    map_50_95 = float(np.mean(list(per_class_ap.values())))
    map_50 = float(np.mean(list(per_class_ap_50.values())))
    if not (math.isfinite(map_50_95) and math.isfinite(map_50)):
        raise InputError("mAP is not finite; detections must have finite boxes and scores")
    return MapResult(map_50_95, map_50, per_class_ap, per_class_ap_50)


def evaluate_detections(dataset: Dataset, detections: Mapping[int, Detections]) -> MapResult:
    """COCO mAP of ``detections`` (keyed by ``Annotation.image_id``, boxes in original pixels).

    Images without an entry in ``detections`` count as having no detections. Crowd regions of a
    COCO dataset are passed on as ``iscrowd`` ignore regions.
    """
    ground_truth = {
        item.image_id: GroundTruth(item.boxes, item.labels, item.crowd_boxes, item.crowd_labels,
                                   item.width, item.height)
        for item in dataset.items
    }
    return coco_map(ground_truth, detections, dataset.class_names)
