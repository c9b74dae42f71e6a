"""Compare detections with an upstream project's own predictions (import as ``from tests.parity_helpers import ...``).

Both sides are lists of COCO-style result dicts ``{"file_name", "category_id" (class index),
"bbox" [x, y, w, h] in original-image pixels, "score"}`` — the format of the ``*.preds.conf*.json``
files under ``../shared/models`` and of ``Detections.to_coco(..., file_name=...)``.

Per image, boxes are paired by edgekit's one matcher (:func:`edgekit.validate.matching.match_pairs`, with
the upstream's boxes as the reference): ours by descending score, each taking the unused upstream box of
the same class with the highest IoU among those with IoU >= ``iou_min`` and |Δscore| <= ``score_tol``
(*matched*). A matched pair is *strict* when IoU >= ``strict_iou`` and |Δscore| <= ``strict_score``.
An upstream box left unmatched whose score lies within ``margin`` of ``conf_threshold`` is counted
as ``near_threshold`` (it may legitimately be on one side only).

Zero-area boxes: an upstream that clips boxes to the image turns a box lying wholly outside it into a
zero-width or zero-height box (YOLO26's one-to-many branch predicts a few), whose IoU with anything is
0/0 — taken as 0 by :func:`box_iou_xywh`. :func:`pair_iou` counts two zero-area boxes whose coordinates
agree within ``zero_area_tol`` pixels as IoU 1 (the same clipped box), so they match like any other.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.tolerances import SAME_BOX_IOU, SAME_BOX_SCORE
from edgekit.validate.matching import match_pairs


@dataclass
class ParityStats:
    """Result of :func:`match_upstream`. Fractions are over the upstream boxes (1.0 when there are none)."""

    upstream: int = 0
    ours: int = 0
    matched: int = 0
    strict: int = 0
    near_threshold: int = 0               # unmatched upstream boxes within the margin of the threshold
    extra: int = 0                        # our detections no upstream box took
    min_iou: float = 1.0                  # over matched pairs
    max_score_delta: float = 0.0          # over matched pairs
    unmatched: list[dict[str, Any]] = field(default_factory=list)  # upstream entries + best IoU/Δscore found

    @property
    def matched_fraction(self) -> float:
        return self.matched / self.upstream if self.upstream else 1.0

    @property
    def strict_fraction(self) -> float:
        return self.strict / self.upstream if self.upstream else 1.0

    def summary(self) -> str:
        return (f"{self.matched}/{self.upstream} upstream boxes matched ({self.matched_fraction:.1%}), strict "
                f"{self.strict}/{self.upstream} ({self.strict_fraction:.1%}); ours {self.ours}, extra {self.extra}, "
                f"unmatched near threshold {self.near_threshold}; min IoU {self.min_iou:.4f}, "
                f"max |Δscore| {self.max_score_delta:.4f}")


def load_predictions(path: str | Path) -> list[dict[str, Any]]:
    """A ``*.preds.conf*.json`` file: a JSON list of result dicts."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def box_iou_xywh(a: list[float], b: list[float]) -> float:
    """IoU of two [x, y, w, h] boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


#: a box side at most this long (pixels) makes a zero-area box (clipped wholly outside the image)
ZERO_SIDE = 1e-3


def is_zero_area(box: list[float]) -> bool:
    """True for an [x, y, w, h] box with (practically) zero width or height."""
    return box[2] <= ZERO_SIDE or box[3] <= ZERO_SIDE


def pair_iou(a: list[float], b: list[float], zero_area_tol: float = 0.5) -> float:
    """IoU of two [x, y, w, h] boxes, except that two zero-area boxes whose four numbers agree within
    ``zero_area_tol`` pixels give 1.0 (the IoU 0/0 of the same clipped box); zero-area vs any other box is 0."""
    if is_zero_area(a) and is_zero_area(b):
        return 1.0 if max(abs(p - q) for p, q in zip(a, b)) <= zero_area_tol else 0.0
    return box_iou_xywh(a, b)


def match_upstream(upstream_preds: Iterable[dict[str, Any]], our_dets: Iterable[dict[str, Any]],
                   iou_min: float = SAME_BOX_IOU, score_tol: float = SAME_BOX_SCORE, strict_iou: float = 0.99,
                   strict_score: float = 0.005, conf_threshold: float | None = None,
                   margin: float = 0.02, zero_area_tol: float = 0.5) -> ParityStats:
    """Match our detections to the upstream's, per ``file_name``; see the module docstring (zero-area boxes:
    :func:`pair_iou` with ``zero_area_tol`` pixels)."""
    by_image_up: dict[str, list[dict]] = defaultdict(list)
    by_image_ours: dict[str, list[dict]] = defaultdict(list)
    for p in upstream_preds:
        by_image_up[p["file_name"]].append(p)
    for d in our_dets:
        by_image_ours[d["file_name"]].append(d)
    stats = ParityStats()
    stats.ours = sum(len(v) for v in by_image_ours.values())
    ious: list[float] = []
    deltas: list[float] = []
    used_total = 0
    for image, ups in by_image_up.items():
        ours = by_image_ours.get(image, [])
        iou = np.array([[pair_iou(up["bbox"], det["bbox"], zero_area_tol) for up in ups] for det in ours],
                       np.float64).reshape(len(ours), len(ups))
        result = match_pairs(iou, [d["score"] for d in ours], [u["score"] for u in ups],
                             [int(d["category_id"]) for d in ours], [int(u["category_id"]) for u in ups],
                             iou_min, score_tol)
        stats.upstream += len(ups)
        used_total += len(result.matches)
        for pair in result.matches:
            ious.append(pair.iou)
            deltas.append(pair.score_delta)
            stats.strict += int(pair.iou >= strict_iou and pair.score_delta <= strict_score)
        for u in sorted(result.missed + [p.reference for p in result.flips], key=lambda u: -ups[u]["score"]):
            up = ups[u]
            # the closest box of ours of the same class, whatever its score: what the report shows for a miss
            same = [j for j, det in enumerate(ours) if int(det["category_id"]) == int(up["category_id"])]
            best = max(same, key=lambda j: iou[j, u], default=-1)
            best_iou = float(iou[best, u]) if best >= 0 else -1.0
            delta = abs(ours[best]["score"] - up["score"]) if best >= 0 else float("inf")
            near = conf_threshold is not None and abs(up["score"] - conf_threshold) <= margin
            stats.near_threshold += int(near)
            stats.unmatched.append({**up, "best_iou": best_iou, "score_delta": delta, "near_threshold": near})
    stats.matched = len(ious)
    stats.extra = stats.ours - used_total
    if ious:
        stats.min_iou = float(np.min(ious))
        stats.max_score_delta = float(np.max(deltas))
    return stats
