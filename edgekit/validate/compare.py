"""Comparing a deployment with its reference: raw tensors and per-image detections.

Returns statistics, not a bool (like Polygraphy's comparator): callers decide what tolerance
applies to which backend and precision.
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgekit.runtime.detections import Detections
from edgekit.runtime.nms import box_iou


@dataclass(frozen=True)
class TensorError:
    """max_abs: max |ref - cand| over all outputs; max_rel: the same divided by each output's max |ref|."""

    max_abs: float
    max_rel: float

    def to_dict(self) -> dict[str, float]:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel}


def tensor_error(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> TensorError:
    if len(reference) != len(candidate):
        raise ValueError(f"tensor_error: {len(reference)} reference outputs vs {len(candidate)} candidate outputs")
    max_abs = 0.0
    max_rel = 0.0
    for ref, cand in zip(reference, candidate):
        if ref.shape != cand.shape:
            raise ValueError(f"tensor_error: shapes differ {ref.shape} vs {cand.shape}")
        if not ref.size:
            continue
        if not (np.isfinite(ref).all() and np.isfinite(cand).all()):
            return TensorError(math.inf, math.inf)  # NaN/Inf on either side is never "no error"
        diff = float(np.max(np.abs(ref.astype(np.float64) - cand.astype(np.float64))))
        scale = float(np.max(np.abs(ref)))
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    return TensorError(max_abs, max_rel)


@dataclass(frozen=True)
class DetectionComparison:
    """How a candidate's detections on one or more images match the reference's.

    Matching is greedy in reference-score order: each reference box takes the unmatched
    candidate box of the same class with the highest IoU, if that IoU ≥ the threshold.
    """

    reference_count: int
    candidate_count: int
    matched: int
    min_iou: float          # over matches (1.0 when nothing matched)
    mean_iou: float
    max_score_delta: float  # over matches
    mean_score_delta: float
    class_flips: int        # a candidate box overlapping an unmatched reference box ≥ threshold with another class

    @property
    def recall(self) -> float:
        return self.matched / self.reference_count if self.reference_count else 1.0

    @property
    def precision(self) -> float:
        return self.matched / self.candidate_count if self.candidate_count else 1.0

    def to_dict(self) -> dict[str, float]:
        return {"reference": self.reference_count, "candidate": self.candidate_count, "matched": self.matched,
                "recall": self.recall, "precision": self.precision, "min_iou": self.min_iou,
                "mean_iou": self.mean_iou, "max_score_delta": self.max_score_delta,
                "mean_score_delta": self.mean_score_delta, "class_flips": self.class_flips}


def compare_detections(reference: Sequence[Detections], candidate: Sequence[Detections],
                       iou_threshold: float = 0.5) -> DetectionComparison:
    """Match detections image by image (same order in both lists) and pool the statistics."""
    if len(reference) != len(candidate):
        raise ValueError(f"compare_detections: {len(reference)} reference images vs {len(candidate)} candidate images")
    ious: list[float] = []
    deltas: list[float] = []
    flips = 0
    ref_total = cand_total = 0
    for ref, cand in zip(reference, candidate):
        ref_total += len(ref)
        cand_total += len(cand)
        if not len(ref) or not len(cand):
            continue
        iou = box_iou(ref.boxes, cand.boxes)
        same_class = ref.labels[:, None] == cand.labels[None, :]
        taken = np.zeros(len(cand), dtype=bool)
        unmatched_refs = []
        for r in np.argsort(-ref.scores, kind="stable"):
            candidates = np.where(same_class[r] & ~taken, iou[r], -1.0)
            c = int(np.argmax(candidates))
            if candidates[c] >= iou_threshold:
                taken[c] = True
                ious.append(float(iou[r, c]))
                deltas.append(abs(float(ref.scores[r]) - float(cand.scores[c])))
            else:
                unmatched_refs.append(r)
        for r in unmatched_refs:
            if np.any(~taken & ~same_class[r] & (iou[r] >= iou_threshold)):
                flips += 1
    return DetectionComparison(
        reference_count=ref_total, candidate_count=cand_total, matched=len(ious),
        min_iou=min(ious) if ious else 1.0, mean_iou=float(np.mean(ious)) if ious else 1.0,
        max_score_delta=max(deltas) if deltas else 0.0, mean_score_delta=float(np.mean(deltas)) if deltas else 0.0,
        class_flips=flips)
