"""Comparing a deployment with its reference: raw tensors and per-image detections.

Returns statistics, not a bool (like Polygraphy's comparator): callers decide what tolerance
applies to which backend and precision (the levels are in :mod:`edgekit.tolerances`).

Raw tensors: per output, the max / mean / 99th percentile of the absolute error |ref - cand|, and the
same divided by that output's max |ref| ("relative"; elementwise |Δ|/|ref| would explode where the
reference is near 0, e.g. logits around 0), so a report can say which output — which head level —
drifted. Detections: the pairs of :mod:`edgekit.validate.matching`, the one matcher.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.runtime.detections import Detections
from edgekit.tolerances import AGREEMENT_IOU
from edgekit.validate.matching import MatchSummary, match_detections


@dataclass(frozen=True)
class OutputError:
    """Error statistics of one output tensor (``name``); relative = absolute / max |reference| of it.

    Any NaN/Inf on either side makes every statistic inf (non-finite is never "no difference").
    """

    name: str
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    p99_rel: float

    def to_dict(self) -> dict[str, float]:
        return {"max_abs": self.max_abs, "mean_abs": self.mean_abs, "p99_abs": self.p99_abs,
                "max_rel": self.max_rel, "mean_rel": self.mean_rel, "p99_rel": self.p99_rel}


def output_error_stats(name: str, reference: np.ndarray, candidate: np.ndarray) -> OutputError:
    """:class:`OutputError` of one output pair (same shape; computed in float64)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"tensor_error: shapes differ {reference.shape} vs {candidate.shape}")
    if not reference.size:
        return OutputError(name, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    if not (np.isfinite(reference).all() and np.isfinite(candidate).all()):
        return OutputError(name, *(math.inf,) * 6)
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).reshape(-1)
    max_abs, mean_abs, p99_abs = float(diff.max()), float(diff.mean()), float(np.percentile(diff, 99))
    scale = float(np.max(np.abs(reference)))
    if scale <= 0:  # an all-zero reference: the absolute error is the only meaningful one
        scale = 1.0
    return OutputError(name, max_abs, mean_abs, p99_abs, max_abs / scale, mean_abs / scale, p99_abs / scale)


@dataclass(frozen=True)
class TensorError:
    """max_abs: max |ref - cand| over all outputs; max_rel: the largest per-output max |ref - cand| / max |ref|.

    ``per_output``: the statistics of each output (Polygraphy-style), in the order given.
    """

    max_abs: float
    max_rel: float
    per_output: tuple[OutputError, ...] = ()

    @property
    def worst_output(self) -> OutputError | None:
        """The output with the largest relative error (the head level that drifted most)."""
        return max(self.per_output, key=lambda o: o.max_rel) if self.per_output else None

    def to_dict(self) -> dict[str, Any]:
        """``max_abs`` and ``max_rel`` (floats), and ``outputs``: name -> that output's statistics."""
        data: dict[str, Any] = {"max_abs": self.max_abs, "max_rel": self.max_rel}
        if self.per_output:
            data["outputs"] = {o.name: o.to_dict() for o in self.per_output}
        return data


def tensor_error(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
                 names: Sequence[str] | None = None) -> TensorError:
    """Error of ``candidate`` outputs against ``reference`` (same count, same shapes; any float dtype).

    ``names`` label the per-output statistics (default ``output0``, ``output1``, …).
    Raises ValueError on a count or shape mismatch.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"tensor_error: {len(reference)} reference outputs vs {len(candidate)} candidate outputs")
    if names is None:
        names = [f"output{i}" for i in range(len(reference))]
    elif len(names) != len(reference):
        raise ValueError(f"tensor_error: {len(names)} names for {len(reference)} outputs")
    per_output = tuple(output_error_stats(str(name), np.asarray(ref), np.asarray(cand))
                       for name, ref, cand in zip(names, reference, candidate))
    max_abs = max((o.max_abs for o in per_output), default=0.0)
    max_rel = max((o.max_rel for o in per_output), default=0.0)
    return TensorError(max_abs, max_rel, per_output)


@dataclass(frozen=True)
class DetectionComparison(MatchSummary):
    """How a candidate's detections on one or more images match the reference's.

    A :class:`~edgekit.validate.matching.MatchSummary` (the pairs of the one matcher: candidates by
    descending score, same class at IoU >= threshold, then class flips; its conventions on empty
    sets) under the names the parity checks read.
    """

    @property
    def matched(self) -> int:
        return self.num_matched

    @property
    def reference_count(self) -> int:
        return self.num_reference

    @property
    def candidate_count(self) -> int:
        return self.num_candidate

    def to_dict(self) -> dict[str, float]:
        return {"reference": self.reference_count, "candidate": self.candidate_count, "matched": self.matched,
                "recall": self.recall, "precision": self.precision, "min_iou": self.min_iou,
                "mean_iou": self.mean_iou, "max_score_delta": self.max_score_delta,
                "mean_score_delta": self.mean_score_delta, "class_flips": self.class_flips}

    def __repr__(self) -> str:  # what a failing test prints (not the per-pair lists)
        return f"DetectionComparison({self.to_dict()})"


def compare_detections(reference: Sequence[Detections], candidate: Sequence[Detections],
                       iou_threshold: float = AGREEMENT_IOU) -> DetectionComparison:
    """Match detections image by image (same order in both lists) and pool the statistics."""
    if len(reference) != len(candidate):
        raise ValueError(f"compare_detections: {len(reference)} reference images vs {len(candidate)} candidate images")
    summary = match_detections(list(candidate), list(reference), iou_threshold)
    return DetectionComparison(**vars(summary))
