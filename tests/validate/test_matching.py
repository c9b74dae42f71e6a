"""The one detection matcher (edgekit.validate.matching): hand-built cases on its edges, and a property
test against a brute-force matcher written independently (pure Python, scalar IoU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.runtime.detections import Detections
from edgekit.validate.agreement import agreement
from edgekit.validate.compare import compare_detections
from edgekit.validate.matching import box_iou, match_detections, match_image, match_pairs

REF = Detections([[0, 0, 100, 100]], [0.9], [0])


def dets(boxes, scores, labels) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), scores, labels)


# --- hand-built cases ----------------------------------------------------------------------------


def test_iou_exactly_on_the_threshold_matches_and_just_below_does_not():
    on = dets([[0, 0, 100, 50]], [0.9], [0])          # 5000 / 10000: IoU 0.5 exactly, in float64
    below = dets([[0, 0, 100, 49.5]], [0.9], [0])     # 4950 / 10000
    assert box_iou(on.boxes, REF.boxes)[0, 0] == 0.5
    assert [(p.candidate, p.reference, p.iou) for p in match_image(on, REF, 0.5).matches] == [(0, 0, 0.5)]
    result = match_image(below, REF, 0.5)
    assert result.matches == () and result.missed == [0] and result.extra == [0]


def test_equal_scores_take_the_lower_index_first_and_equal_ious_the_lower_reference():
    # two identical candidates, equal scores, one reference: candidate 0 wins, candidate 1 is extra
    twins = dets([[0, 0, 100, 100], [0, 0, 100, 100]], [0.5, 0.5], [0, 0])
    result = match_image(twins, REF, 0.5)
    assert [(p.candidate, p.reference) for p in result.matches] == [(0, 0)] and result.extra == [1]
    # one candidate, two references at the same IoU: the lower reference index is taken
    refs = dets([[0, 0, 100, 100], [0, 0, 100, 100]], [0.7, 0.8], [0, 0])
    result = match_image(dets([[0, 0, 100, 100]], [0.75], [0]), refs, 0.5)
    assert [(p.candidate, p.reference) for p in result.matches] == [(0, 0)] and result.missed == [1]


def test_higher_score_wins_even_with_the_lower_iou():
    # COCO's greedy rule: candidates by descending score, not by IoU
    cand = dets([[0, 0, 100, 60], [0, 0, 100, 95]], [0.9, 0.8], [0, 0])
    result = match_image(cand, REF, 0.5)
    assert [(p.candidate, round(p.iou, 6)) for p in result.matches] == [(0, 0.6)] and result.extra == [1]


def test_class_flip_is_counted_apart_from_matches():
    cand = dets([[0, 0, 100, 100]], [0.9], [3])
    summary = match_detections([cand], [REF], 0.5)
    assert (summary.num_matched, summary.class_flips, summary.flip_counts) == (0, 1, {(0, 3): 1})
    assert (summary.precision, summary.recall) == (0.0, 0.0)
    result = match_image(cand, REF, 0.5)
    assert result.missed == [] and result.extra == []           # the object was found, with the wrong class
    # a second, differently labelled box on an already matched reference is extra, not a flip
    both = dets([[0, 0, 100, 100], [0, 0, 100, 100]], [0.9, 0.4], [0, 3])
    summary = match_detections([both], [REF], 0.5)
    assert (summary.num_matched, summary.class_flips, summary.precision) == (1, 0, 0.5)


def test_score_tolerance_picks_the_admissible_pair():
    # the best-IoU box is 0.2 off in score; the second one (IoU 0.95) is within 0.03: it is the match
    cand = dets([[0, 0, 100, 100], [0, 0, 100, 95]], [0.7, 0.88], [0, 0])
    summary = match_detections([cand], [REF], 0.9, score_tolerance=0.03)
    assert summary.num_matched == 1 and summary.min_iou == pytest.approx(0.95)
    assert summary.max_score_delta == pytest.approx(0.02, abs=1e-6)
    only_far = dets([[0, 0, 100, 100]], [0.7], [0])
    assert match_detections([only_far], [REF], 0.9, score_tolerance=0.03).num_matched == 0


def test_empty_conventions():
    empty = Detections.empty()
    summary = match_detections([empty], [empty], 0.5)
    assert (summary.precision, summary.recall, summary.min_iou, summary.max_score_delta) == (1.0, 1.0, 1.0, 0.0)
    assert math.isnan(summary.mean_iou) and math.isnan(summary.mean_score_delta)
    assert (match_detections([empty], [REF], 0.5).recall, match_detections([REF], [empty], 0.5).precision) == (0, 0)
    # mappings: an image id in one only has no detections in the other
    assert match_detections({1: REF}, {2: REF}, 0.5).num_matched == 0
    with pytest.raises(ValueError, match="2 candidate images vs 1"):
        match_detections([REF, REF], [REF], 0.5)


# --- brute force ---------------------------------------------------------------------------------


def scalar_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def brute_force(cand: Detections, ref: Detections, threshold: float):
    """The rule as stated in matching's docstring, written as plain loops."""
    cb, cs, cl = cand.boxes.astype(float).tolist(), cand.scores.astype(float).tolist(), cand.labels.tolist()
    rb, rl = ref.boxes.astype(float).tolist(), ref.labels.tolist()
    order = sorted(range(len(cb)), key=lambda i: (-cs[i], i))
    taken_r: set[int] = set()
    taken_c: set[int] = set()
    out = []
    for same in (True, False):
        pairs = []
        for c in order:
            if c in taken_c:
                continue
            best, best_iou = None, -1.0
            for r in range(len(rb)):
                if r in taken_r or (cl[c] == rl[r]) != same:
                    continue
                iou = scalar_iou(cb[c], rb[r])
                if iou >= threshold and iou > best_iou:
                    best, best_iou = r, iou
            if best is not None:
                taken_r.add(best)
                taken_c.add(c)
                pairs.append((c, best))
        out.append(pairs)
    return out


# coordinates on a coarse grid so many IoUs tie or land exactly on the threshold
coord = st.integers(0, 8).map(lambda v: v * 10.0)
box = st.tuples(coord, coord, st.integers(1, 6), st.integers(1, 6)).map(
    lambda t: [t[0], t[1], t[0] + t[2] * 10.0, t[1] + t[3] * 10.0])
detection = st.tuples(box, st.sampled_from([0.3, 0.5, 0.5, 0.7, 0.9]), st.integers(0, 2))
image = st.lists(detection, max_size=7).map(
    lambda items: dets([i[0] for i in items], [i[1] for i in items], [i[2] for i in items]) if items
    else Detections.empty())


@settings(max_examples=300, deadline=None)
@given(cand=image, ref=image, threshold=st.sampled_from([0.25, 0.5, 0.75, 1.0]))
def test_matches_the_brute_force_matcher(cand, ref, threshold):
    result = match_image(cand, ref, threshold)
    matches, flips = brute_force(cand, ref, threshold)
    assert [(p.candidate, p.reference) for p in result.matches] == matches
    assert [(p.candidate, p.reference) for p in result.flips] == flips
    # every box is matched, flipped, or missed / extra: exactly once
    assert len(result.matches) + len(result.flips) + len(result.missed) == len(ref)
    assert len(result.matches) + len(result.flips) + len(result.extra) == len(cand)
    # parity and agreement are the same numbers: they derive from these pairs
    comparison = compare_detections([ref], [cand], threshold)
    agreed = agreement({0: cand}, {0: ref}, threshold)
    assert (comparison.matched, comparison.class_flips) == (agreed.num_matched, agreed.class_flips) \
        == (len(matches), len(flips))
    assert (comparison.precision, comparison.recall) == (agreed.precision, agreed.recall)


@settings(max_examples=100, deadline=None)
@given(cand=image, ref=image)
def test_match_pairs_on_a_given_iou_matrix_equals_match_image(cand, ref):
    direct = match_image(cand, ref, 0.5)
    given_iou = match_pairs(box_iou(cand.boxes, ref.boxes), cand.scores, ref.scores, cand.labels, ref.labels, 0.5)
    assert direct == given_iou
