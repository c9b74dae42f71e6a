"""Label-free agreement of one detector's output with another's.

The reference detections (e.g. the PyTorch model, already filtered by its own score threshold)
are treated as pseudo ground truth and the candidate (e.g. an INT8 engine) is scored against
them. Per image, candidates are taken in descending score order and each is matched greedily to
the unmatched reference box of the same class with the highest IoU, if that IoU >= ``iou``
(the COCO matching rule). Then, still by descending score, unmatched candidates are matched to
unmatched reference boxes of a *different* class at IoU >= ``iou``: each such pair is a class
flip (the object was found, with the wrong class). So every reference box ends up matched,
flipped, or missed.

    precision = matched / candidate boxes        recall = matched / reference boxes

with the conventions precision = 1 when there is no candidate box and recall = 1 when there is
no reference box (nothing was wrongly added / nothing was left out). ``map_50_95`` / ``map_50``
score the candidate against the reference with pycocotools (same path as dataset mAP); when the
reference has no box at all they are 1.0 if the candidate has none either, else 0.0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import InputError
from edgekit.runtime.detections import Detections
from edgekit.validate.coco_eval import GroundTruth, coco_map


@dataclass(frozen=True)
class AgreementResult:
    """How well a candidate's detections agree with a reference's.

    mean_iou / mean_abs_score_delta are over matched pairs (NaN when nothing matched).
    flip_counts maps (reference label, candidate label) -> number of flipped boxes.
    """

    precision: float
    recall: float
    mean_iou: float
    mean_abs_score_delta: float
    class_flips: int
    map_50_95: float
    map_50: float
    num_candidate: int
    num_reference: int
    num_matched: int
    iou_threshold: float = 0.5
    flip_counts: dict[tuple[int, int], int] = field(default_factory=dict)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes: a [N, 4], b [M, 4] -> float64 [N, M].

    IoU = area(a ∩ b) / (area(a) + area(b) - area(a ∩ b)); 0 where the union is empty.
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    inter_w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    inter_h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = inter_w * inter_h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match_image(candidate: Detections, reference: Detections, iou: float):
    """Greedy matching in one image -> (matched pairs [(cand, ref, iou)], flips [(ref_label, cand_label)])."""
    if not len(candidate) or not len(reference):
        return [], []
    ious = box_iou(candidate.boxes, reference.boxes)
    order = np.argsort(-candidate.scores, kind="stable")
    same_class = candidate.labels[:, None] == reference.labels[None, :]
    ref_taken = np.zeros(len(reference), bool)
    cand_taken = np.zeros(len(candidate), bool)

    matches = []
    for c in order:
        allowed = np.where(same_class[c] & ~ref_taken, ious[c], -1.0)
        r = int(np.argmax(allowed))
        if allowed[r] >= iou:
            ref_taken[r] = cand_taken[c] = True
            matches.append((int(c), r, float(ious[c, r])))

    flips = []
    for c in order:
        if cand_taken[c]:
            continue
        allowed = np.where(~same_class[c] & ~ref_taken, ious[c], -1.0)
        r = int(np.argmax(allowed))
        if allowed[r] >= iou:
            ref_taken[r] = cand_taken[c] = True
            flips.append((int(reference.labels[r]), int(candidate.labels[c])))
    return matches, flips


def agreement(candidate: Mapping[int, Detections], reference: Mapping[int, Detections],
              iou: float = 0.5) -> AgreementResult:
    """Agreement of ``candidate`` with ``reference`` detections (both keyed by image id).

    An image id present in only one mapping has no detections in the other. Boxes are xyxy
    pixels; labels are 0-based class indices shared by both.
    """
    if not 0.0 < iou <= 1.0:
        raise InputError(f"agreement IoU threshold {iou}: expected a value in (0, 1]")
    image_ids = sorted(set(candidate) | set(reference))
    empty = Detections.empty()
    ious, score_deltas, flips = [], [], Counter()
    num_candidate = num_reference = 0
    for image_id in image_ids:
        cand, ref = candidate.get(image_id, empty), reference.get(image_id, empty)
        num_candidate += len(cand)
        num_reference += len(ref)
        matches, image_flips = _match_image(cand, ref, iou)
        for c, r, pair_iou in matches:
            ious.append(pair_iou)
            score_deltas.append(abs(float(cand.scores[c]) - float(ref.scores[r])))
        flips.update(image_flips)

    num_matched = len(ious)
    precision = num_matched / num_candidate if num_candidate else 1.0
    recall = num_matched / num_reference if num_reference else 1.0

    if num_reference:
        all_labels = [d.labels for d in (*candidate.values(), *reference.values()) if len(d)]
        num_classes = int(max(int(labels.max()) for labels in all_labels)) + 1
        ground_truth = {i: GroundTruth(reference.get(i, empty).boxes, reference.get(i, empty).labels)
                        for i in image_ids}
        result = coco_map(ground_truth, {i: candidate[i] for i in image_ids if i in candidate},
                          tuple(str(k) for k in range(num_classes)))
        map_50_95, map_50 = result.map_50_95, result.map_50
    else:
        map_50_95 = map_50 = 1.0 if num_candidate == 0 else 0.0

    return AgreementResult(
        precision=precision, recall=recall,
        mean_iou=float(np.mean(ious)) if ious else float("nan"),
        mean_abs_score_delta=float(np.mean(score_deltas)) if score_deltas else float("nan"),
        class_flips=int(sum(flips.values())), map_50_95=map_50_95, map_50=map_50,
        num_candidate=num_candidate, num_reference=num_reference, num_matched=num_matched,
        iou_threshold=iou, flip_counts=dict(flips),
    )
