"""Label-free agreement of a candidate detector with a reference one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgekit.errors import InputError
from edgekit.runtime.detections import Detections
from edgekit.validate.agreement import agreement, box_iou

# Reference: 3 images, 7 boxes in all, well separated, classes 0..2.
REFERENCE = {
    1: Detections([[10, 10, 50, 50], [60, 10, 100, 40], [10, 60, 40, 120]], [0.9, 0.8, 0.7], [0, 1, 2]),
    2: Detections([[20, 20, 80, 90], [100, 100, 150, 160]], [0.95, 0.6], [1, 1]),
    3: Detections([[5, 5, 25, 25], [130, 10, 190, 70]], [0.5, 0.85], [2, 0]),
}
NUM_REFERENCE = 7


def _replace(dets: Detections, index: int, box=None, score=None, label=None) -> Detections:
    boxes, scores, labels = dets.boxes.copy(), dets.scores.copy(), dets.labels.copy()
    if box is not None:
        boxes[index] = box
    if score is not None:
        scores[index] = score
    if label is not None:
        labels[index] = label
    return Detections(boxes, scores, labels)


def test_identical_detections_agree_fully():
    result = agreement(REFERENCE, REFERENCE)
    assert (result.precision, result.recall) == (1.0, 1.0)
    assert result.mean_iou == pytest.approx(1.0) and result.mean_abs_score_delta == 0.0
    assert result.class_flips == 0 and result.flip_counts == {}
    assert result.map_50_95 == pytest.approx(1.0) and result.map_50 == pytest.approx(1.0)
    assert (result.num_candidate, result.num_reference, result.num_matched) == (7, 7, 7)


def test_removing_a_box_lowers_recall_only():
    candidate = dict(REFERENCE)
    keep = np.array([True, False, True])
    d = REFERENCE[1]
    candidate[1] = Detections(d.boxes[keep], d.scores[keep], d.labels[keep])
    result = agreement(candidate, REFERENCE)
    assert result.recall == pytest.approx(6 / 7) and result.precision == 1.0
    candidate.pop(3)  # a whole image with no candidate detections
    result = agreement(candidate, REFERENCE)
    assert result.recall == pytest.approx(4 / 7) and result.precision == 1.0


def test_extra_box_lowers_precision_only():
    candidate = dict(REFERENCE)
    d = REFERENCE[2]
    candidate[2] = Detections(np.vstack([d.boxes, [[160, 10, 190, 40]]]), np.append(d.scores, 0.3), np.append(d.labels, 0))
    result = agreement(candidate, REFERENCE)
    assert result.precision == pytest.approx(7 / 8) and result.recall == 1.0
    # The extra box is a false positive against the reference, ranked last in its class: AP@.5
    # stays 1 for class 0 (all its true positives come first), so mAP stays 1.
    assert result.map_50 == pytest.approx(1.0)


def test_class_flip_is_counted():
    candidate = dict(REFERENCE)
    candidate[1] = _replace(REFERENCE[1], 1, label=2)     # reference class 1 -> candidate class 2
    candidate[3] = _replace(REFERENCE[3], 1, label=1)     # reference class 0 -> candidate class 1
    result = agreement(candidate, REFERENCE)
    assert result.class_flips == 2
    assert result.flip_counts == {(1, 2): 1, (0, 1): 1}
    assert result.recall == pytest.approx(5 / 7) and result.precision == pytest.approx(5 / 7)
    assert result.map_50_95 < 1.0


def test_duplicate_with_other_class_is_not_a_flip():
    # The reference box is already matched by a same-class candidate: a second, differently
    # labelled box on it is an extra detection, not a class confusion.
    d = REFERENCE[1]
    candidate = dict(REFERENCE)
    candidate[1] = Detections(np.vstack([d.boxes, d.boxes[:1]]), np.append(d.scores, 0.2), np.append(d.labels, 1))
    result = agreement(candidate, REFERENCE)
    assert result.class_flips == 0 and result.recall == 1.0 and result.precision == pytest.approx(7 / 8)


@pytest.mark.parametrize("target_iou, matched", [(0.8, True), (0.55, True), (0.45, False)])
def test_shifted_box_iou_and_threshold(target_iou, matched):
    # Shift a w-wide box by d = w (1 - u) / (1 + u) -> IoU u with the original.
    candidate = dict(REFERENCE)
    x1, y1, x2, y2 = REFERENCE[2].boxes[0].tolist()
    d = (x2 - x1) * (1 - target_iou) / (1 + target_iou)
    candidate[2] = _replace(REFERENCE[2], 0, box=[x1 + d, y1, x2 + d, y2])
    result = agreement(candidate, REFERENCE, iou=0.5)
    if matched:
        assert result.recall == 1.0
        assert result.mean_iou == pytest.approx((6 + target_iou) / 7, abs=1e-6)
    else:
        assert result.recall == pytest.approx(6 / 7) and result.mean_iou == pytest.approx(1.0)
    assert result.class_flips == 0


def test_score_deltas_and_greedy_order():
    candidate = {k: Detections(d.boxes, d.scores - 0.1, d.labels) for k, d in REFERENCE.items()}
    assert agreement(candidate, REFERENCE).mean_abs_score_delta == pytest.approx(0.1, abs=1e-6)

    # Two same-class candidates compete for one reference box: the higher score wins even
    # though its IoU is lower (COCO's greedy rule); the other one is left unmatched.
    ref = {1: Detections([[0, 0, 100, 100]], [0.9], [0])}
    cand = {1: Detections([[0, 0, 100, 60], [0, 0, 100, 95]], [0.9, 0.8], [0, 0])}
    result = agreement(cand, ref)
    assert result.mean_iou == pytest.approx(0.6) and result.precision == pytest.approx(0.5)


def test_empty_conventions():
    both_empty = agreement({1: Detections.empty()}, {})
    assert (both_empty.precision, both_empty.recall, both_empty.map_50_95) == (1.0, 1.0, 1.0)
    assert math.isnan(both_empty.mean_iou) and math.isnan(both_empty.mean_abs_score_delta)
    nothing_found = agreement({}, REFERENCE)
    assert (nothing_found.precision, nothing_found.recall, nothing_found.map_50_95) == (1.0, 0.0, 0.0)
    all_wrong = agreement(REFERENCE, {})
    assert (all_wrong.precision, all_wrong.recall, all_wrong.map_50_95) == (0.0, 1.0, 0.0)


def test_bad_threshold():
    with pytest.raises(InputError, match="expected a value in"):
        agreement(REFERENCE, REFERENCE, iou=0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_iou_matches_pixel_count(seed):
    """IoU of integer boxes equals |A ∩ B| / |A ∪ B| counted on a pixel grid."""
    rng = np.random.default_rng(seed)
    a = np.sort(rng.integers(0, 40, (6, 2, 2)), axis=1).reshape(6, 4)[:, [0, 2, 1, 3]]
    b = np.sort(rng.integers(0, 40, (5, 2, 2)), axis=1).reshape(5, 4)[:, [0, 2, 1, 3]]
    ious = box_iou(a, b)

    def mask(box):
        m = np.zeros((40, 40), bool)
        m[box[1]:box[3], box[0]:box[2]] = True
        return m

    for i in range(len(a)):
        for j in range(len(b)):
            ma, mb = mask(a[i]), mask(b[j])
            union = (ma | mb).sum()
            expected = (ma & mb).sum() / union if union else 0.0
            assert ious[i, j] == pytest.approx(expected)
