"""The one detection matcher: which candidate box is which reference box.

Parity (``compare.compare_detections``), label-free agreement (``agreement.agreement``), the INT8
drift judges and the drift report's sample images all derive their numbers from the pairs made here,
so a metric name means the same thing everywhere.

The rule, per image (the COCO evaluation rule, with the reference as ground truth):

1. Candidates are visited by descending score (ties: lower index first).
2. Each takes the not yet taken reference box **of the same class** with the highest IoU among those
   that are *admissible*: IoU >= ``iou_threshold`` (IoU exactly at the threshold matches, as in
   pycocotools) and, when ``score_tolerance`` is given, |Δscore| <= ``score_tolerance``.
   Ties in IoU: the lower reference index. No admissible box: the candidate stays unmatched.
3. Then, again by descending score, each still unmatched candidate takes the not yet taken reference
   box **of another class** with the highest admissible IoU: a *class flip* (the object was found,
   with the wrong class). Flips are not matches.

So every reference box ends up matched, flipped or missed, and every candidate box matched, flipped
or extra. Pooled over images (:class:`MatchSummary`)::

    precision = matched / candidate boxes        recall = matched / reference boxes

with precision = 1 when there is no candidate box and recall = 1 when there is no reference box.
Over the matched pairs: ``min_iou`` (1.0 when nothing matched) and ``max_score_delta`` (0.0 when
nothing matched) bound the worst pair; ``mean_iou`` and ``mean_score_delta`` are NaN when nothing
matched (there is no mean of nothing).

The thresholds the project judges with live in :mod:`edgekit.tolerances` (IoU 0.5 for agreement,
IoU 0.9 and |Δscore| 0.03 for "the same box").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit.runtime.detections import Detections


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes: a [N, 4], b [M, 4] -> float64 [N, M].

    IoU = area(a ∩ b) / (area(a) + area(b) - area(a ∩ b)); 0 where the union is empty. float64 so a
    pair built to sit exactly on a threshold compares as built (the runtime's NMS IoU is float32).
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


@dataclass(frozen=True)
class Pair:
    """One candidate box paired with one reference box (indices into that image's detections)."""

    candidate: int
    reference: int
    iou: float
    score_delta: float          # |candidate score - reference score|


@dataclass(frozen=True)
class ImageMatch:
    """The pairs of one image: ``matches`` (same class) and ``flips`` (another class), in the order made."""

    matches: tuple[Pair, ...]
    flips: tuple[Pair, ...]
    num_candidate: int
    num_reference: int

    @property
    def extra(self) -> list[int]:
        """Candidate indices neither matched nor flipped."""
        used = {p.candidate for p in (*self.matches, *self.flips)}
        return [i for i in range(self.num_candidate) if i not in used]

    @property
    def missed(self) -> list[int]:
        """Reference indices neither matched nor flipped."""
        used = {p.reference for p in (*self.matches, *self.flips)}
        return [i for i in range(self.num_reference) if i not in used]


def match_pairs(iou: np.ndarray, candidate_scores: np.ndarray, reference_scores: np.ndarray,
                candidate_labels: np.ndarray, reference_labels: np.ndarray, iou_threshold: float,
                score_tolerance: float | None = None) -> ImageMatch:
    """The matching rule of the module docstring on a precomputed IoU matrix ``iou`` [C, R] (float).

    For callers whose IoU is not plain xyxy IoU (e.g. tests' upstream parity counting two equal
    zero-area boxes as IoU 1). Scores [C] / [R] float, labels [C] / [R] int.
    """
    iou = np.asarray(iou, np.float64).reshape(len(candidate_scores), len(reference_scores))
    c_scores = np.asarray(candidate_scores, np.float64).reshape(-1)
    r_scores = np.asarray(reference_scores, np.float64).reshape(-1)
    c_labels = np.asarray(candidate_labels).reshape(-1)
    r_labels = np.asarray(reference_labels).reshape(-1)
    num_c, num_r = len(c_scores), len(r_scores)
    if not num_c or not num_r:
        return ImageMatch((), (), num_c, num_r)
    deltas = np.abs(c_scores[:, None] - r_scores[None, :])
    admissible = iou >= iou_threshold
    if score_tolerance is not None:
        admissible &= deltas <= score_tolerance
    same_class = c_labels[:, None] == r_labels[None, :]
    order = np.argsort(-c_scores, kind="stable")
    ref_taken = np.zeros(num_r, bool)
    cand_taken = np.zeros(num_c, bool)

    def sweep(class_mask: np.ndarray) -> tuple[Pair, ...]:
        made = []
        for c in order:
            if cand_taken[c]:
                continue
            allowed = np.where(class_mask[c] & admissible[c] & ~ref_taken, iou[c], -1.0)
            r = int(np.argmax(allowed))  # first index among equal IoUs
            if allowed[r] >= 0.0:  # -1 marks a box that is not admissible, of the wrong class or taken
                ref_taken[r] = cand_taken[c] = True
                made.append(Pair(int(c), r, float(iou[c, r]), float(deltas[c, r])))
        return tuple(made)

    matches = sweep(same_class)
    flips = sweep(~same_class)
    return ImageMatch(matches, flips, num_c, num_r)


def match_image(candidate: Detections, reference: Detections, iou_threshold: float,
                score_tolerance: float | None = None) -> ImageMatch:
    """:func:`match_pairs` of two images' detections (xyxy boxes, IoU by :func:`box_iou`)."""
    return match_pairs(box_iou(candidate.boxes, reference.boxes), candidate.scores, reference.scores,
                       candidate.labels, reference.labels, iou_threshold, score_tolerance)


@dataclass(frozen=True)
class MatchSummary:
    """Matches pooled over images (see the module docstring for the conventions on empty sets).

    ``ious`` / ``score_deltas`` are over matched pairs; ``flip_counts`` maps
    (reference label, candidate label) -> flipped boxes.
    """

    num_candidate: int
    num_reference: int
    ious: tuple[float, ...]
    score_deltas: tuple[float, ...]
    flip_counts: dict[tuple[int, int], int] = field(default_factory=dict)
    iou_threshold: float = 0.5
    score_tolerance: float | None = None

    @property
    def num_matched(self) -> int:
        return len(self.ious)

    @property
    def class_flips(self) -> int:
        return int(sum(self.flip_counts.values()))

    @property
    def precision(self) -> float:
        return self.num_matched / self.num_candidate if self.num_candidate else 1.0

    @property
    def recall(self) -> float:
        return self.num_matched / self.num_reference if self.num_reference else 1.0

    @property
    def min_iou(self) -> float:
        """The lowest IoU of a matched pair (1.0 without pairs: nothing is misplaced)."""
        return min(self.ious, default=1.0)

    @property
    def mean_iou(self) -> float:
        return _mean_or_nan(self.ious)

    @property
    def mean_score_delta(self) -> float:
        return _mean_or_nan(self.score_deltas)

    @property
    def max_score_delta(self) -> float:
        """The largest |score difference| of a matched pair (0.0 without pairs)."""
        return max(self.score_deltas, default=0.0)


def _mean_or_nan(values: Sequence[float]) -> float:
    """The mean, NaN for no values (a mean over nothing is undefined, not 0 or 1)."""
    return float(np.mean(values)) if len(values) else float("nan")


def match_detections(candidate: Mapping[Any, Detections] | Sequence[Detections],
                     reference: Mapping[Any, Detections] | Sequence[Detections], iou_threshold: float,
                     score_tolerance: float | None = None) -> MatchSummary:
    """Match image by image and pool: mappings by key (a key in only one has no detections in the
    other), sequences by position (they must have the same length; ``ValueError`` otherwise)."""
    if isinstance(candidate, Mapping) != isinstance(reference, Mapping):
        raise TypeError("match_detections: pass two mappings (image id -> Detections) or two sequences")
    if isinstance(candidate, Mapping) and isinstance(reference, Mapping):
        empty = Detections.empty()
        keys = sorted(set(candidate) | set(reference), key=lambda k: (str(type(k)), k))
        images = [(candidate.get(k, empty), reference.get(k, empty)) for k in keys]
    else:
        if len(candidate) != len(reference):
            raise ValueError(f"match_detections: {len(candidate)} candidate images vs {len(reference)} reference images")
        images = list(zip(candidate, reference))
    ious: list[float] = []
    deltas: list[float] = []
    flips: Counter[tuple[int, int]] = Counter()
    num_candidate = num_reference = 0
    for cand, ref in images:
        result = match_image(cand, ref, iou_threshold, score_tolerance)
        num_candidate += len(cand)
        num_reference += len(ref)
        ious += [p.iou for p in result.matches]
        deltas += [p.score_delta for p in result.matches]
        flips.update((int(ref.labels[p.reference]), int(cand.labels[p.candidate])) for p in result.flips)
    return MatchSummary(num_candidate, num_reference, tuple(ious), tuple(deltas), dict(flips),
                        iou_threshold, score_tolerance)


__all__ = ["ImageMatch", "MatchSummary", "Pair", "box_iou", "match_detections", "match_image", "match_pairs"]
