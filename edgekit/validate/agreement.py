"""Label-free agreement of one detector's output with another's.

The reference detections (e.g. the PyTorch model, already filtered by its own score threshold)
are treated as pseudo ground truth and the candidate (e.g. an INT8 engine) is scored against
them, with the one matching rule of :mod:`edgekit.validate.matching` (candidates by descending
score, same class first at IoU >= ``iou``, then class flips): precision, recall, mean IoU and
mean |Δscore| of matched pairs, class flips. ``map_50_95`` / ``map_50`` score the candidate against
the reference with pycocotools (same path as dataset mAP); when the reference has no box at all
they are 1.0 if the candidate has none either, else 0.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from edgekit.errors import InputError
from edgekit.runtime.detections import Detections
from edgekit.tolerances import AGREEMENT_IOU
from edgekit.validate.coco_eval import GroundTruth, coco_map
from edgekit.validate.matching import box_iou, match_detections


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
    iou_threshold: float = AGREEMENT_IOU
    flip_counts: dict[tuple[int, int], int] = field(default_factory=dict)


def agreement(candidate: Mapping[int, Detections], reference: Mapping[int, Detections],
              iou: float = AGREEMENT_IOU) -> AgreementResult:
    """Agreement of ``candidate`` with ``reference`` detections (both keyed by image id).

    An image id present in only one mapping has no detections in the other. Boxes are xyxy
    pixels; labels are 0-based class indices shared by both.
    """
    if not 0.0 < iou <= 1.0:
        raise InputError(f"agreement IoU threshold {iou}: expected a value in (0, 1]")
    image_ids = sorted(set(candidate) | set(reference))
    empty = Detections.empty()
    matched = match_detections(candidate, reference, iou)
    num_candidate, num_reference, num_matched = matched.num_candidate, matched.num_reference, matched.num_matched

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
        precision=matched.precision, recall=matched.recall, mean_iou=matched.mean_iou,
        mean_abs_score_delta=matched.mean_score_delta, class_flips=matched.class_flips, map_50_95=map_50_95,
        map_50=map_50, num_candidate=num_candidate, num_reference=num_reference, num_matched=num_matched,
        iou_threshold=iou, flip_counts=matched.flip_counts,
    )


__all__ = ["AgreementResult", "agreement", "box_iou"]
