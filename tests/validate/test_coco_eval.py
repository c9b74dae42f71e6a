"""COCO mAP: pycocotools is the engine; the expected numbers here are derived by hand or from IoU.

COCO AP at one IoU threshold is the mean over the 101 recall points r = 0, 0.01, ..., 1 of the
interpolated precision max{precision(r') : r' >= r} (0 where recall r is never reached);
mAP@[.5:.95] averages that over the ten thresholds 0.50, 0.55, ..., 0.95 and over the classes
that have ground truth.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import InputError
from edgekit.runtime.detections import Detections
from edgekit.validate import synth
from edgekit.validate.coco_eval import MapResult, evaluate_detections
from edgekit.validate.datasets import Annotation, Dataset, DatasetError, load_dataset

IOU_THRESHOLDS = [0.5 + 0.05 * i for i in range(10)]


def make_dataset(images: list[tuple[list[list[float]], list[int]]], class_names=("a", "b", "c"),
                 size: int = 200, crowd: dict[int, tuple[list, list]] | None = None) -> Dataset:
    """In-memory dataset: image i+1 has the given xyxy boxes and labels."""
    crowd = crowd or {}
    items = []
    for i, (boxes, labels) in enumerate(images):
        extra = {}
        if i + 1 in crowd:
            extra = {"crowd_boxes": np.array(crowd[i + 1][0], np.float32).reshape(-1, 4),
                     "crowd_labels": np.array(crowd[i + 1][1], np.int64)}
        items.append(Annotation(image_id=i + 1, file_name=f"{i + 1}.jpg", width=size, height=size,
                                boxes=np.array(boxes, np.float32).reshape(-1, 4),
                                labels=np.array(labels, np.int64), **extra))
    return Dataset(root=Path("."), image_dir=Path("."), class_names=tuple(class_names), items=tuple(items),
                   category_ids=tuple(range(1, len(class_names) + 1)))


def ground_truth_as_detections(dataset: Dataset) -> dict[int, Detections]:
    return {item.image_id: Detections(item.boxes, np.ones(len(item.boxes)), item.labels) for item in dataset.items}


def iou_xyxy(a, b) -> float:
    """Plain IoU of two xyxy boxes (the test's own oracle)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("eval") / "tiny", "val", seed=11, num_images=8, progress=False)


# Well separated boxes of several sizes and classes, two images.
SEPARATED = make_dataset([
    ([[10, 10, 50, 40], [100, 20, 180, 100], [20, 120, 26, 128]], [0, 1, 2]),
    ([[60, 60, 90, 150], [120, 130, 190, 190]], [0, 1]),
])


@pytest.mark.parametrize("layout", ["coco", "yolo"])
def test_perfect_detections_score_one(synth_dir, layout):
    dataset = load_dataset(synth_dir, layout=layout)
    result = evaluate_detections(dataset, ground_truth_as_detections(dataset))
    assert result.map_50_95 == pytest.approx(1.0) and result.map_50 == pytest.approx(1.0)
    present = {dataset.class_names[k] for item in dataset.items for k in item.labels.tolist()}
    assert set(result.per_class_ap) == present
    assert all(v == pytest.approx(1.0) for v in result.per_class_ap.values())


@pytest.mark.parametrize("target_iou", [0.525, 0.575, 0.625, 0.775, 0.925, 0.99])
def test_shifted_boxes_give_the_iou_implied_map(target_iou):
    # Shifting a w-wide box right by d gives IoU = (w - d) / (w + d), so d = w (1 - u) / (1 + u).
    detections = {}
    passed_per_box = []
    for item in SEPARATED.items:
        shifted = item.boxes.astype(np.float64).copy()
        widths = shifted[:, 2] - shifted[:, 0]
        shifted[:, [0, 2]] += (widths * (1 - target_iou) / (1 + target_iou))[:, None]
        detections[item.image_id] = Detections(shifted, np.ones(len(shifted)), item.labels)
        for gt, det in zip(item.boxes.tolist(), detections[item.image_id].boxes.tolist()):
            iou = iou_xyxy(gt, det)
            assert abs(iou - target_iou) < 1e-4
            passed_per_box.append(sum(iou >= t for t in IOU_THRESHOLDS))
    # All boxes have the same IoU: each threshold is either all true positives (AP 1) or all
    # false positives (AP 0), so mAP@[.5:.95] = (thresholds passed) / 10 and AP@.5 = 1.
    assert len(set(passed_per_box)) == 1
    result = evaluate_detections(SEPARATED, detections)
    assert result.map_50 == pytest.approx(1.0)
    assert result.map_50_95 == pytest.approx(passed_per_box[0] / 10)
    if target_iou == 0.625:
        assert result.map_50_95 == pytest.approx(3 / 10)  # 0.50, 0.55, 0.60 pass


def test_missing_class_and_class_without_ground_truth():
    dets = {}
    for item in SEPARATED.items:
        keep = item.labels == 0  # only class "a" is found
        dets[item.image_id] = Detections(item.boxes[keep], np.ones(keep.sum()), item.labels[keep])
    # Classes "b" and "c" have ground truth but no detection: AP 0, and they count in the mean.
    result = evaluate_detections(SEPARATED, dets)
    assert result.per_class_ap == pytest.approx({"a": 1.0, "b": 0.0, "c": 0.0})
    assert result.map_50_95 == pytest.approx(1 / 3) and result.map_50 == pytest.approx(1 / 3)

    # Class "c" with no ground truth anywhere: it has no AP and does not enter the mean.
    no_c = make_dataset([(item.boxes[item.labels != 2].tolist(), item.labels[item.labels != 2].tolist())
                         for item in SEPARATED.items])
    dets[1] = Detections(np.vstack([dets[1].boxes, [[150, 150, 190, 190]]]), np.ones(2), [0, 2])
    result = evaluate_detections(no_c, dets)
    assert result.per_class_ap == pytest.approx({"a": 1.0, "b": 0.0})
    assert result.map_50_95 == pytest.approx(0.5)
    assert result.map_50_95 == pytest.approx(np.mean(list(result.per_class_ap.values())))


def test_random_detections_score_low(synth_dir):
    dataset = load_dataset(synth_dir)
    rng = np.random.default_rng(0)
    detections = {}
    for item in dataset.items:
        xy = rng.uniform(0, 140, (30, 2))
        wh = rng.uniform(4, 60, (30, 2))
        detections[item.image_id] = Detections(np.hstack([xy, xy + wh]), rng.uniform(0, 1, 30),
                                               rng.integers(0, 6, 30))
    result = evaluate_detections(dataset, detections)
    assert 0.0 <= result.map_50_95 < 0.03 and result.map_50 < 0.08


# ---- AP by hand, one class, 2 ground-truth boxes ------------------------------------------

GT_A, GT_B = [10, 10, 60, 60], [100, 100, 150, 170]
TWO_BOXES = make_dataset([([GT_A, GT_B], [0, 0])], class_names=("only",))
FAR_AWAY = [160, 10, 190, 40]
NEAR_A = [10, 10, 60, 65.5]  # IoU with A = 50*50 / (50*55.5) = 0.9009: a duplicate of A


@pytest.mark.parametrize("boxes, scores, expected_ap", [
    # TP(A), duplicate of A (FP: A is taken), TP(B). Precision/recall after each: (1, 1/2),
    # (1/2, 1/2), (2/3, 1). Interpolated precision: 1 for r <= 0.5 (51 recall points 0.00..0.50),
    # 2/3 for r in 0.51..1.00 (50 points).
    ([GT_A, NEAR_A, GT_B], [0.9, 0.8, 0.7], (51 * 1 + 50 * 2 / 3) / 101),
    # FP first, then TP(A), TP(B): (0, 0), (1/2, 1/2), (2/3, 1). Interpolated precision is 2/3 at
    # every recall point.
    ([FAR_AWAY, GT_A, GT_B], [0.95, 0.9, 0.8], 2 / 3),
    # TP(A), then two FPs; B never found: precision 1 up to recall 0.5, nothing beyond -> 51/101.
    ([GT_A, FAR_AWAY, NEAR_A], [0.9, 0.8, 0.7], 51 / 101),
])
def test_hand_computed_ap(boxes, scores, expected_ap):
    # The true positives are exact (IoU 1) and the duplicate / far box stays a false positive at
    # every threshold, so AP is the same at all ten IoU thresholds.
    result = evaluate_detections(TWO_BOXES, {1: Detections(boxes, scores, [0, 0, 0])})
    assert result.map_50 == pytest.approx(expected_ap, abs=1e-9)
    assert result.map_50_95 == pytest.approx(expected_ap, abs=1e-9)
    assert result.per_class_ap == pytest.approx({"only": expected_ap})


def test_crowd_regions_are_ignored():
    dataset = make_dataset([([[10, 10, 50, 50]], [0])], class_names=("a",), crowd={1: ([[100, 100, 200, 200]], [0])})
    # The top-scoring detection lies inside the crowd region: ignored, not a false positive.
    dets = {1: Detections([[120, 120, 160, 160], [10, 10, 50, 50]], [0.9, 0.5], [0, 0])}
    assert evaluate_detections(dataset, dets).map_50_95 == pytest.approx(1.0)
    without_crowd = make_dataset([([[10, 10, 50, 50]], [0])], class_names=("a",))
    # Without the region the same detection is a false positive ranked first: AP = 1/2 everywhere.
    assert evaluate_detections(without_crowd, dets).map_50_95 == pytest.approx(0.5)


def test_no_detections_is_zero_not_a_crash():
    empty = evaluate_detections(SEPARATED, {})
    assert empty == MapResult(0.0, 0.0, {"a": 0.0, "b": 0.0, "c": 0.0}, {"a": 0.0, "b": 0.0, "c": 0.0})
    all_empty = evaluate_detections(SEPARATED, {1: Detections.empty(), 2: Detections.empty()})
    assert all_empty.map_50_95 == 0.0
    # One image detected perfectly, the other left out of the mapping: half the boxes found.
    item = SEPARATED.items[0]
    partial = evaluate_detections(SEPARATED, {1: Detections(item.boxes, np.ones(3), item.labels), 2: Detections.empty()})
    # Class a: 1 of 2 found at precision 1 -> AP = 51/101 (recall 0..0.5); same for b; c fully found.
    assert partial.per_class_ap == pytest.approx({"a": 51 / 101, "b": 51 / 101, "c": 1.0})


def test_bad_detections_are_rejected():
    with pytest.raises(InputError, match="image id 99"):
        evaluate_detections(SEPARATED, {99: Detections([[0, 0, 1, 1]], [1], [0])})
    with pytest.raises(InputError, match="label 3"):
        evaluate_detections(SEPARATED, {1: Detections([[0, 0, 1, 1]], [1], [3])})
    with pytest.raises(DatasetError, match="no ground-truth boxes"):
        evaluate_detections(make_dataset([([], [])]), {1: Detections([[0, 0, 1, 1]], [1], [0])})


def test_matches_pycocotools_on_the_json_file(synth_dir):
    """In-memory ground truth + our reading of the precision array == pycocotools run on the files."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = load_dataset(synth_dir)
    rng = np.random.default_rng(3)
    detections, results = {}, []
    for item in dataset.items:
        jitter = rng.normal(0, 1.5, item.boxes.shape)
        labels = np.where(rng.uniform(size=len(item.labels)) < 0.15, rng.integers(0, 6, len(item.labels)), item.labels)
        dets = Detections(item.boxes + jitter, rng.uniform(0.2, 1, len(item.labels)), labels)
        detections[item.image_id] = dets
        results += dets.to_coco(item.image_id, category_ids=list(dataset.category_ids))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(synth_dir / "annotations" / "instances.json"))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(results))), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ours = evaluate_detections(dataset, detections)
    assert 0.2 < ours.map_50_95 < 0.95  # a non-trivial case
    # Detections.to_coco rounds to 1e-3 px; the ground-truth area field differs (mask vs box) but
    # only matters for the small/medium/large ranges, not for "all".
    assert ours.map_50_95 == pytest.approx(evaluator.stats[0], abs=2e-3)
    assert ours.map_50 == pytest.approx(evaluator.stats[1], abs=2e-3)
