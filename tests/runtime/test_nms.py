"""edgekit.runtime.nms against three independent oracles.

1. ONNX Runtime's own ``NonMaxSuppression`` operator (one-node ONNX graph, opset 17).
2. A pure-Python greedy loop in this file, with the IoU written out in float32 scalars in the order
   of ONNX Runtime's CPU kernel (``SuppressByIOU``).
3. The torch reference ``edgekit.reference.nms`` (plain greedy loop).

Semantics under test: xyxy boxes, greedy by descending score with ties in index order, suppression
iff IoU (float32) is STRICTLY greater than the threshold (float32), empty boxes never suppress and
are never suppressed, class-aware = only same-label boxes suppress each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import InputError
from edgekit.runtime import nms as rt
from tests.helpers import skip_unless_backends

try:  # the torch reference is an extra oracle; the runtime tests must also run on a torch-free device
    import torch

    from edgekit.reference import nms as ref
except ImportError:
    torch = ref = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch (reference oracle) not installed")

F32 = np.float32


# --------------------------------------------------------------------------------------------------
# Oracle 1: ONNX Runtime NonMaxSuppression

@pytest.fixture(scope="module")
def ort_nms():
    """Callable (boxes [N,4], scores [C,N], iou, score_threshold) -> list of C index lists, in ORT's order."""
    skip_unless_backends("onnxruntime")
    import onnx
    import onnxruntime as ort

    helper, tp = onnx.helper, onnx.TensorProto
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_threshold"],
                            ["selected"], center_point_box=0)
    graph = helper.make_graph(
        [node], "nms",
        [helper.make_tensor_value_info("boxes", tp.FLOAT, [1, "N", 4]),
         helper.make_tensor_value_info("scores", tp.FLOAT, [1, "C", "N"]),
         helper.make_tensor_value_info("max_out", tp.INT64, [1]),
         helper.make_tensor_value_info("iou", tp.FLOAT, [1]),
         helper.make_tensor_value_info("score_threshold", tp.FLOAT, [1])],
        [helper.make_tensor_value_info("selected", tp.INT64, ["K", 3])])
    # IR 8 = the IR of opset 17; newer onnx writes an IR version older runtimes reject.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def run(boxes, scores, iou_threshold, score_threshold=0.0):
        boxes = np.asarray(boxes, F32).reshape(-1, 4)
        scores = np.asarray(scores, F32).reshape(-1, len(boxes))
        # ONNX's center_point_box=0 layout is [y1, x1, y2, x2]; IoU is symmetric in x and y, so xyxy is fine.
        selected = session.run(None, {
            "boxes": boxes[None], "scores": scores[None], "max_out": np.array([1 << 30], np.int64),
            "iou": np.array([iou_threshold], F32), "score_threshold": np.array([score_threshold], F32)})[0]
        return [selected[selected[:, 1] == c, 2].tolist() for c in range(len(scores))]

    return run


def ort_batched(ort_nms, boxes, scores, labels, iou_threshold, num_classes):
    """Per-class ORT kept lists: class c sees only its own boxes (others score 0 < threshold 0 fails '>')."""
    per_class = np.zeros((num_classes, len(boxes)), F32)
    per_class[labels, np.arange(len(boxes))] = scores
    return ort_nms(boxes, per_class, iou_threshold, 0.0)


# --------------------------------------------------------------------------------------------------
# Oracle 2: pure-Python greedy with float32 scalar IoU

def oracle_iou(a, b) -> np.float32:
    ax1, ay1, ax2, ay2 = (F32(v) for v in a)
    bx1, by1, bx2, by2 = (F32(v) for v in b)
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if not (iw > 0 and ih > 0):
        return F32(0)
    inter = iw * ih
    area_a = (ax2 - ax1) * (ay2 - ay1) if (ax2 > ax1 and ay2 > ay1) else F32(0)
    area_b = (bx2 - bx1) * (by2 - by1) if (bx2 > bx1 and by2 > by1) else F32(0)
    with np.errstate(invalid="ignore"):                        # inf - inf for infinite boxes
        union = area_a + area_b - inter
    if not (inter > 0 and area_a > 0 and area_b > 0 and union > 0):
        return F32(0)
    return inter / union


def oracle_nms(boxes, scores, labels, iou_threshold) -> list[int]:
    """Greedy NMS; labels None = agnostic. Python's sort is stable: ties stay in index order."""
    threshold = F32(iou_threshold)
    order = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))
    kept: list[int] = []
    for i in order:
        if all((labels is not None and labels[k] != labels[i]) or oracle_iou(boxes[i], boxes[k]) <= threshold
               for k in kept):
            kept.append(i)
    return kept


def oracle_postprocess(boxes, scores, labels, conf, iou, agnostic, topk, max_det, apply_nms):
    out = []
    for b, s, lab in zip(boxes, scores, labels):
        candidates = [i for i in range(len(s)) if F32(s[i]) > F32(conf)]
        candidates = sorted(candidates, key=lambda i: -float(s[i]))[:topk]
        if apply_nms:
            local = oracle_nms(b[candidates], s[candidates], None if agnostic else lab[candidates], iou)
            candidates = [candidates[j] for j in local]
        out.append(candidates[:max_det])
    return out


def assert_valid_greedy(boxes, scores, labels, iou_threshold, kept):
    """A valid greedy result under some tie order: no kept pair (same label) overlaps above the
    threshold, and every dropped box overlaps a kept box with a higher-or-equal score above it."""
    kept = list(kept)
    threshold = F32(iou_threshold)
    same = (lambda i, k: True) if labels is None else (lambda i, k: labels[i] == labels[k])
    for a in range(len(kept)):
        for b in range(a + 1, len(kept)):
            i, k = kept[a], kept[b]
            assert not (same(i, k) and oracle_iou(boxes[i], boxes[k]) > threshold), (i, k)
    kept_set = set(kept)
    for j in range(len(boxes)):
        if j not in kept_set:
            assert any(same(j, k) and scores[k] >= scores[j] and oracle_iou(boxes[j], boxes[k]) > threshold
                       for k in kept), f"box {j} was dropped without a kept higher-scored box above the threshold"


# --------------------------------------------------------------------------------------------------
# Inputs

def random_boxes(rng, n, *, objects=20, size=640.0):
    """Realistic candidate sets: most boxes jittered around a few objects (so NMS has work), some noise."""
    centers = rng.uniform(0.1 * size, 0.9 * size, (objects, 2))
    extents = rng.uniform(0.03 * size, 0.4 * size, (objects, 2))
    which = rng.integers(0, objects, n)
    cxy = centers[which] + rng.normal(0, 0.1, (n, 2)) * extents[which]
    wh = extents[which] * rng.uniform(0.7, 1.3, (n, 2))
    noise = rng.random(n) < 0.2
    cxy[noise] = rng.uniform(0, size, (noise.sum(), 2))
    wh[noise] = rng.uniform(2, 0.3 * size, (noise.sum(), 2))
    return np.concatenate([cxy - wh / 2, cxy + wh / 2], axis=1).astype(F32)


def distinct_scores(rng, n):
    scores = ((rng.permutation(n) + 1) / (n + 1)).astype(F32)
    assert len(np.unique(scores)) == n
    return scores


def tied_scores(rng, n, levels=4):
    return (rng.integers(1, levels + 1, n) / levels).astype(F32)


def torch_ref_nms(boxes, scores, labels, iou_threshold):
    b, s = torch.from_numpy(np.asarray(boxes, F32)), torch.from_numpy(np.asarray(scores))
    if labels is None:
        return ref.nms(b, s, iou_threshold).numpy()
    return ref.batched_nms(b, s, torch.from_numpy(np.asarray(labels, np.int64)), iou_threshold).numpy()


def assert_torch_ref_agrees(expected, boxes, scores, labels, iou_threshold):
    """The torch reference gives ``expected`` too (checked wherever torch is installed)."""
    if torch is not None:
        assert torch_ref_nms(boxes, scores, labels, iou_threshold).tolist() == list(expected)


# --------------------------------------------------------------------------------------------------
# box_iou

def test_box_iou_known_values():
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [0, 0, 4, 4], [1, 1, 3, 3], [5, 5, 6, 6], [2, 0, 4, 2]], F32)
    iou = rt.box_iou(boxes, boxes)
    assert iou.dtype == np.float32 and iou.shape == (6, 6)
    assert iou[0, 1] == F32(1) / F32(7)          # inter 1, union 4 + 4 - 1
    assert iou[2, 1] == F32(0.25)                # [1,1,3,3] inside [0,0,4,4]
    assert iou[1, 3] == 1 and iou[0, 0] == 1
    assert iou[0, 4] == 0                        # disjoint
    assert iou[0, 5] == 0                        # touching edge: zero-width intersection
    np.testing.assert_array_equal(iou, iou.T)


def test_box_iou_degenerate_boxes_are_zero():
    normal = np.array([[0, 0, 10, 10]], F32)
    degenerate = np.array([[5, 5, 5, 5],          # point
                           [0, 5, 10, 5],         # horizontal line
                           [10, 10, 0, 0],        # inverted corners
                           [0, 0, np.nan, 10],    # NaN
                           [0, 0, np.inf, 10]], F32)
    iou = rt.box_iou(np.concatenate([normal, degenerate]), np.concatenate([normal, degenerate]))
    assert iou[0, 0] == 1
    assert not iou[1:, :].any() and not iou[:, 1:].any()
    assert rt.box_iou(np.zeros((0, 4)), normal).shape == (0, 1)
    assert rt.box_iou(normal, np.zeros((0, 4))).shape == (1, 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_box_iou_matches_python_and_torch(seed):
    rng = np.random.default_rng(seed)
    a, b = random_boxes(rng, 40), random_boxes(rng, 30)
    a[:3] = [[1, 1, 1, 1], [3, 3, 1, 1], [0, 0, 0, 5]]   # degenerate rows too
    got = rt.box_iou(a, b)
    expected = np.array([[oracle_iou(x, y) for y in b] for x in a], F32)
    np.testing.assert_array_equal(got, expected)
    if torch is not None:
        np.testing.assert_array_equal(got, ref.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy())
    assert (got > 0).mean() > 0.05                       # the sets really overlap


# --------------------------------------------------------------------------------------------------
# nms / batched_nms against ONNX Runtime

@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("n", [2, 10, 100, 1000])
def test_nms_matches_ort_exactly(ort_nms, n, iou_threshold):
    rng = np.random.default_rng(n)
    boxes, scores = random_boxes(rng, n), distinct_scores(rng, n)
    (expected,) = ort_nms(boxes, scores[None], iou_threshold)
    got = rt.nms(boxes, scores, iou_threshold)
    assert got.dtype == np.int64
    assert got.tolist() == expected
    labels = rng.integers(0, 5, n)
    assert rt.batched_nms(boxes, scores, labels, iou_threshold, class_agnostic=True).tolist() == expected
    if n >= 100:
        assert len(expected) < n                         # NMS had work to do


@pytest.mark.parametrize("num_classes", [3, 80])
@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_batched_nms_matches_ort_per_class(ort_nms, num_classes, iou_threshold):
    rng = np.random.default_rng(num_classes)
    n = 1500
    boxes, scores = random_boxes(rng, n), distinct_scores(rng, n)
    labels = rng.integers(0, num_classes, n)
    got = rt.batched_nms(boxes, scores, labels, iou_threshold)
    assert np.all(np.diff(scores[got]) < 0)                   # one list, descending over all classes
    expected = ort_batched(ort_nms, boxes, scores, labels, iou_threshold, num_classes)
    for c in range(num_classes):
        assert got[labels[got] == c].tolist() == expected[c], f"class {c}"
    agnostic = rt.batched_nms(boxes, scores, labels, iou_threshold, class_agnostic=True)
    assert len(agnostic) < len(got)                           # class-aware really keeps more


@pytest.mark.parametrize("class_aware", [False, True])
def test_ten_thousand_boxes_match_ort(ort_nms, class_aware):
    rng = np.random.default_rng(10_000)
    n, num_classes = 10_000, 80
    boxes, scores = random_boxes(rng, n, objects=50), distinct_scores(rng, n)
    labels = rng.integers(0, num_classes, n)
    if class_aware:
        got = rt.batched_nms(boxes, scores, labels, 0.5)
        expected = ort_batched(ort_nms, boxes, scores, labels, 0.5, num_classes)
        for c in range(num_classes):
            assert got[labels[got] == c].tolist() == expected[c], f"class {c}"
    else:
        (expected,) = ort_nms(boxes, scores[None], 0.5)
        assert rt.nms(boxes, scores, 0.5).tolist() == expected


@pytest.mark.parametrize("iou_threshold", [0.0, 1.0])
def test_threshold_extremes_match_ort(ort_nms, iou_threshold):
    rng = np.random.default_rng(7)
    boxes, scores = random_boxes(rng, 300), distinct_scores(rng, 300)
    boxes[10] = boxes[11]                                     # identical pair: IoU exactly 1
    (expected,) = ort_nms(boxes, scores[None], iou_threshold)
    got = rt.nms(boxes, scores, iou_threshold)
    assert got.tolist() == expected
    if iou_threshold == 1.0:
        assert len(got) == 300                                # IoU is never > 1
    else:
        assert 0 < len(got) < 100                             # any overlap suppresses


# --------------------------------------------------------------------------------------------------
# Boxes exactly on the threshold

# (threshold, lower-scored box) with the higher box [0, 0, a, 1]: integer coordinates, so inter and
# union are exact and IoU = inter / union rounds to exactly float32(threshold).
ON_THRESHOLD = [
    (0.3, [[0, 0, 6, 1], [3, 0, 10, 1]]),     # inter 3, union 6 + 7 - 3 = 10
    (0.5, [[0, 0, 3, 1], [1, 0, 4, 1]]),      # inter 2, union 3 + 3 - 2 = 4
    (0.5, [[0, 0, 10, 1], [0, 0, 5, 1]]),     # nested: IoU = 5/10 = inner width / outer width
    (0.5, [[0, 0, 10, 1], [5, 0, 10, 1]]),    # nested, right-aligned: IoU = iw / w exactly, the
                                              # bound the implementation prunes candidate pairs with
    (0.7, [[0, 0, 8, 1], [1, 0, 10, 1]]),     # inter 7, union 8 + 9 - 7 = 10
]


@pytest.mark.parametrize("threshold,pair", ON_THRESHOLD)
def test_iou_equal_to_threshold_does_not_suppress(ort_nms, threshold, pair):
    boxes = np.array(pair, F32)
    scores = np.array([0.9, 0.8], F32)
    assert rt.box_iou(boxes[:1], boxes[1:])[0, 0] == F32(threshold)    # the construction is exact
    assert rt.nms(boxes, scores, threshold).tolist() == [0, 1]
    assert ort_nms(boxes, scores[None], threshold) == [[0, 1]]
    assert_torch_ref_agrees([0, 1], boxes, scores, None, threshold)
    assert oracle_nms(boxes, scores, None, threshold) == [0, 1]
    # One float32 step below the threshold, the same pair is suppressed by every implementation.
    below = float(np.nextafter(F32(threshold), F32(0)))
    assert rt.nms(boxes, scores, below).tolist() == [0]
    assert ort_nms(boxes, scores[None], below) == [[0]]
    assert_torch_ref_agrees([0], boxes, scores, None, below)
    # Class-aware with different labels: never suppressed.
    assert rt.batched_nms(boxes, scores, np.array([0, 1]), below).tolist() == [0, 1]


def test_threshold_is_compared_in_float32():
    # IoU = 3/10 rounds to float32(0.3) = 0.30000001192..., which is > 0.3 as a double. ONNX Runtime
    # compares in float32 (so the pair survives); a float64 comparison would suppress it.
    boxes = np.array(ON_THRESHOLD[0][1], F32)
    assert float(rt.box_iou(boxes[:1], boxes[1:])[0, 0]) > 0.3
    assert rt.nms(boxes, np.array([0.9, 0.8], F32), 0.3).tolist() == [0, 1]


# --------------------------------------------------------------------------------------------------
# Ties, degenerate boxes, edge sizes

@pytest.mark.parametrize("class_aware", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_duplicate_scores(ort_nms, seed, class_aware):
    rng = np.random.default_rng(100 + seed)
    n = 200
    boxes, scores = random_boxes(rng, n, objects=8), tied_scores(rng, n)
    boxes[5:9] = boxes[4]                                     # identical boxes with tied scores too
    scores[5:9] = scores[4]
    labels = rng.integers(0, 3, n) if class_aware else None
    got = (rt.batched_nms(boxes, scores, labels, 0.5) if class_aware else rt.nms(boxes, scores, 0.5)).tolist()
    # Exact: ties resolve by index (stable sort), like the pure-Python oracle and the torch reference.
    assert got == oracle_nms(boxes, scores, labels, 0.5)
    assert_torch_ref_agrees(got, boxes, scores, labels, 0.5)
    assert_valid_greedy(boxes, scores, labels, 0.5, got)
    # ONNX Runtime's tie order is not part of the ONNX spec: require a valid greedy result only.
    if class_aware:
        ort_kept = [i for kept in ort_batched(ort_nms, boxes, scores, labels, 0.5, 3) for i in kept]
    else:
        (ort_kept,) = ort_nms(boxes, scores[None], 0.5)
    assert_valid_greedy(boxes, scores, labels, 0.5, ort_kept)


def test_ties_resolve_to_lower_index():
    boxes = np.array([[0, 0, 10, 10]] * 3 + [[50, 50, 60, 60]], F32)
    scores = np.array([0.5, 0.5, 0.5, 0.5], F32)
    assert rt.nms(boxes, scores, 0.5).tolist() == [0, 3]
    scores[2] = 0.6
    assert rt.nms(boxes, scores, 0.5).tolist() == [2, 3]


def test_zero_area_boxes_never_suppress_nor_are_suppressed(ort_nms):
    boxes = np.array([[5, 5, 5, 5],        # point inside box 3, highest score
                      [5, 5, 5, 5],        # identical point
                      [0, 5, 10, 5],       # zero-height line through box 3
                      [0, 0, 10, 10],
                      [1, 1, 10, 10],      # suppressed by box 3 (IoU 0.81)
                      [3, 3, 3, 8]], F32)  # zero-width line
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], F32)
    expected = [0, 1, 2, 3, 5]
    assert rt.nms(boxes, scores, 0.5).tolist() == expected
    assert rt.nms(boxes, scores, 0.0).tolist() == expected
    assert ort_nms(boxes, scores[None], 0.5) == [expected]
    assert_torch_ref_agrees(expected, boxes, scores, None, 0.5)
    assert oracle_nms(boxes, scores, None, 0.5) == expected


def test_inverted_and_non_finite_boxes_are_empty():
    # ONNX Runtime would swap inverted corners; edgekit treats them as empty (documented difference).
    boxes = np.array([[0, 0, 10, 10], [10, 10, 0, 0], [0, 0, np.nan, 10], [0, 0, np.inf, 10],
                      [-np.inf, 0, 10, 10], [1, 1, 10, 10]], F32)
    scores = np.array([0.1, 0.9, 0.8, 0.7, 0.6, 0.05], F32)
    expected = [1, 2, 3, 4, 0]                                 # box 5 suppressed by box 0 only
    assert rt.nms(boxes, scores, 0.5).tolist() == expected
    assert oracle_nms(boxes, scores, None, 0.5) == expected
    assert_torch_ref_agrees(expected, boxes, scores, None, 0.5)


def test_no_boxes_and_one_box():
    for fn in (lambda b, s: rt.nms(b, s, 0.5),
               lambda b, s: rt.batched_nms(b, s, np.zeros(len(s), np.int64), 0.5)):
        empty = fn(np.zeros((0, 4), F32), np.zeros(0, F32))
        assert empty.dtype == np.int64 and empty.shape == (0,)
        one = fn(np.array([[1, 2, 3, 4]], F32), np.array([0.3], F32))
        assert one.dtype == np.int64 and one.tolist() == [0]
    assert_torch_ref_agrees([], np.zeros((0, 4), F32), np.zeros(0, F32), None, 0.5)


def test_scores_of_other_dtypes_sort_correctly():
    boxes = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]], np.float64)
    assert rt.nms(boxes, np.array([1, 3, 2], np.uint8), 0.5).tolist() == [1, 2, 0]
    assert rt.nms(boxes, np.array([0.1, 0.3, 0.2]), 0.5).tolist() == [1, 2, 0]


# --------------------------------------------------------------------------------------------------
# Against the pure-Python oracle and the torch reference on many random sets

@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("class_aware", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_random_sets_match_python_oracle(seed, class_aware, iou_threshold):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 250))
    boxes = random_boxes(rng, n, objects=int(rng.integers(1, 10)))
    if seed % 2:
        boxes = np.round(boxes / 16) * 16                     # coarse grid: many exact ties in IoU
    scores = tied_scores(rng, n, 6) if seed >= 2 else distinct_scores(rng, n)
    labels = rng.integers(0, 4, n) if class_aware else None
    got = rt.batched_nms(boxes, scores, labels, iou_threshold) if class_aware else rt.nms(boxes, scores, iou_threshold)
    assert got.tolist() == oracle_nms(boxes, scores, labels, iou_threshold)


@needs_torch
@pytest.mark.parametrize("class_aware", [False, True])
@pytest.mark.parametrize("n", [1, 37, 500, 2000])
def test_random_sets_match_torch_reference(n, class_aware):
    rng = np.random.default_rng(n)
    boxes, scores = random_boxes(rng, n, objects=30), tied_scores(rng, n, 50)
    labels = rng.integers(0, 10, n) if class_aware else None
    got = rt.batched_nms(boxes, scores, labels, 0.45) if class_aware else rt.nms(boxes, scores, 0.45)
    np.testing.assert_array_equal(got, torch_ref_nms(boxes, scores, labels, 0.45))


# --------------------------------------------------------------------------------------------------
# The implementation's internal paths: chunked pair expansion and the sequential fallback

def test_deep_suppression_chain_uses_exact_fallback(ort_nms, monkeypatch):
    # Boxes [i, 0, i + 10, 1] with falling scores: i suppresses i+1..i+3 (IoU 9/11, 8/12, 7/13), not
    # i+4 (6/14), so the kept set is every 4th box, and whether box j survives depends on a chain
    # of j/4 earlier decisions: far more fixpoint rounds than the cap, so the fallback must run.
    n = 1000
    offsets = np.arange(n, dtype=F32)
    boxes = np.stack([offsets, np.zeros(n, F32), offsets + 10, np.ones(n, F32)], axis=1)
    scores = np.linspace(1, 0.1, n).astype(F32)
    calls = []
    original = rt._greedy_sequential
    monkeypatch.setattr(rt, "_greedy_sequential", lambda *a: calls.append(1) or original(*a))
    got = rt.nms(boxes, scores, 0.5)
    assert calls, "the fixpoint iteration converged before the cap: the fallback was not exercised"
    assert got.tolist() == list(range(0, n, 4))
    assert ort_nms(boxes, scores[None], 0.5) == [got.tolist()]


@pytest.mark.parametrize("rounds,chunk", [(1, 1 << 20), (2, 7), (3, 1)])
@pytest.mark.parametrize("class_aware", [False, True])
def test_internal_limits_do_not_change_results(monkeypatch, rounds, chunk, class_aware):
    rng = np.random.default_rng(rounds * 10 + chunk)
    n = 300
    boxes, scores = random_boxes(rng, n, objects=6), tied_scores(rng, n, 20)
    labels = rng.integers(0, 3, n) if class_aware else None
    expected = oracle_nms(boxes, scores, labels, 0.5)
    monkeypatch.setattr(rt, "_MAX_FIXPOINT_ROUNDS", rounds)
    monkeypatch.setattr(rt, "_PAIR_CHUNK", chunk)
    got = rt.batched_nms(boxes, scores, labels, 0.5) if class_aware else rt.nms(boxes, scores, 0.5)
    assert got.tolist() == expected


def test_negative_and_large_coordinates_class_aware():
    # The plain "labels * (max_coord + 1)" offset trick breaks for negative coordinates; ours must not.
    rng = np.random.default_rng(3)
    n = 400
    boxes = random_boxes(rng, n, objects=10) - 300
    boxes[:50] *= 1000
    scores, labels = distinct_scores(rng, n), rng.integers(0, 5, n)
    assert rt.batched_nms(boxes, scores, labels, 0.5).tolist() == oracle_nms(boxes, scores, labels, 0.5)
    # Coordinates so large that float64 "label * span" offsets no longer separate the classes:
    # identical boxes with different labels must both survive, with the same label only the first.
    huge = np.array([[0, 0, 1e19, 1e19]] * 2, F32)
    for threshold in (0.0, 0.5):
        assert rt.batched_nms(huge, np.array([0.9, 0.8], F32), np.array([0, 1]), threshold).tolist() == [0, 1]
        assert rt.batched_nms(huge, np.array([0.9, 0.8], F32), np.array([1, 1]), threshold).tolist() == [0]


# --------------------------------------------------------------------------------------------------
# Validation

@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), "half", None])
def test_iou_threshold_out_of_range_is_input_error(bad):
    boxes, scores = np.zeros((2, 4), F32), np.zeros(2, F32)
    with pytest.raises(InputError, match="iou_threshold"):
        rt.nms(boxes, scores, bad)
    with pytest.raises(InputError, match="iou_threshold"):
        rt.batched_nms(boxes, scores, np.zeros(2, np.int64), bad)
    with pytest.raises(InputError, match="iou_threshold"):
        rt.postprocess(boxes[None], scores[None], np.zeros((1, 2), np.int64), conf_threshold=0.1,
                       iou_threshold=bad, class_agnostic=False, pre_nms_topk=10, max_detections=10)
    if torch is not None:
        with pytest.raises(InputError, match="iou_threshold"):
            ref.nms(torch.zeros(2, 4), torch.zeros(2), bad)


def test_shape_errors_are_input_errors():
    with pytest.raises(InputError, match=r"boxes must have shape \[N, 4\]"):
        rt.nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    with pytest.raises(InputError, match=r"scores must have shape \[3\]"):
        rt.nms(np.zeros((3, 4)), np.zeros(4), 0.5)
    with pytest.raises(InputError, match="labels must be an integer"):
        rt.batched_nms(np.zeros((3, 4)), np.zeros(3), np.zeros(3), 0.5)
    with pytest.raises(InputError, match=r"boxes must have shape \[N, 4\]"):
        rt.box_iou(np.zeros(4), np.zeros((1, 4)))


def test_runtime_nms_does_not_import_torch():
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    code = "import sys, edgekit.runtime.nms; sys.exit(3 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or "importing edgekit.runtime.nms imported torch"


# --------------------------------------------------------------------------------------------------
# postprocess

def run_postprocess(boxes, scores, labels, **kw):
    kw.setdefault("apply_nms", True)
    got = rt.postprocess(boxes, scores, labels, **kw)
    expected = oracle_postprocess(boxes, scores, labels, kw["conf_threshold"], kw["iou_threshold"],
                                  kw["class_agnostic"], kw["pre_nms_topk"], kw["max_detections"], kw["apply_nms"])
    assert len(got) == len(expected) == len(boxes)
    for (b, s, lab), idx, ib, is_, il in zip(got, expected, boxes, scores, labels):
        assert b.dtype == np.float32 and s.dtype == np.float32 and lab.dtype == np.int64
        assert b.shape == (len(idx), 4) and s.shape == lab.shape == (len(idx),)
        np.testing.assert_array_equal(b, ib[idx])
        np.testing.assert_array_equal(s, is_[idx])
        np.testing.assert_array_equal(lab, il[idx])
        assert np.all(np.diff(s) <= 0)
    if torch is not None:
        reference = ref.postprocess(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), **kw)
        assert len(reference) == len(got)
        for (b, s, lab), (rb, rs, rl) in zip(got, reference):
            np.testing.assert_array_equal(b, rb.numpy())
            np.testing.assert_array_equal(s, rs.numpy())
            np.testing.assert_array_equal(lab, rl.numpy())
    return got


def batch_of(rng, batch, n, num_classes=5, levels=None):
    boxes = np.stack([random_boxes(rng, n, objects=8) for _ in range(batch)])
    scores = rng.random((batch, n)).astype(F32) if levels is None else tied_scores(rng, batch * n, levels).reshape(batch, n)
    return boxes, scores, rng.integers(0, num_classes, (batch, n))


def test_conf_threshold_is_strict_and_float32(ort_nms):
    boxes = np.array([[[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7]]], F32)
    scores = np.array([[0.25, np.nextafter(F32(0.25), F32(1)), F32(0.001), 0.2]], F32)
    labels = np.zeros((1, 4), np.int64)
    common = dict(iou_threshold=0.5, class_agnostic=False, pre_nms_topk=10, max_detections=10)
    (b, s, _), = run_postprocess(boxes, scores, labels, conf_threshold=0.25, **common)
    assert s.tolist() == [scores[0, 1]]                        # == 0.25 dropped, one ulp above kept
    # float32(0.001) == score: not strictly greater in float32 (as ONNX Runtime's score_threshold).
    (_, s, _), = run_postprocess(boxes, scores, labels, conf_threshold=0.001, **common)
    assert s.tolist() == [scores[0, 1], 0.25, F32(0.2)]
    for conf in (0.25, 0.001, 0.2):
        (ort_kept,) = ort_nms(boxes[0], scores, 0.5, conf)
        (_, s, _), = rt.postprocess(boxes, scores, labels, conf_threshold=conf, **common)
        np.testing.assert_array_equal(s, scores[0, ort_kept])


def test_pre_nms_topk_applies_before_nms_with_ties_by_index():
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 10.5], [50, 50, 60, 60], [80, 80, 90, 90], [0, 0, 10, 9.5]]], F32)
    scores = np.array([[0.9, 0.8, 0.7, 0.7, 0.7]], F32)
    labels = np.zeros((1, 5), np.int64)
    common = dict(conf_threshold=0.1, iou_threshold=0.5, class_agnostic=True, max_detections=10)
    (b, s, _), = run_postprocess(boxes, scores, labels, pre_nms_topk=2, **common)
    assert b.tolist() == [[0, 0, 10, 10]]                     # top-2 overlap; box 2 was cut before NMS
    (b, _, _), = run_postprocess(boxes, scores, labels, pre_nms_topk=3, **common)
    assert b.tolist() == [[0, 0, 10, 10], [50, 50, 60, 60]]   # tie at the cut: index 2 before 3 and 4
    (b, _, _), = run_postprocess(boxes, scores, labels, pre_nms_topk=5, **common)
    assert len(b) == 3


def test_max_detections_cuts_after_nms():
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]], F32)
    scores = np.array([[0.9, 0.8, 0.7, 0.6]], F32)
    labels = np.zeros((1, 4), np.int64)
    (b, s, _), = run_postprocess(boxes, scores, labels, conf_threshold=0.1, iou_threshold=0.5,
                                 class_agnostic=False, pre_nms_topk=10, max_detections=2)
    assert s.tolist() == [F32(0.9), F32(0.7)]


def test_apply_nms_false_keeps_overlaps():
    boxes = np.array([[[0, 0, 10, 10]] * 4], F32)
    scores = np.array([[0.9, 0.3, 0.8, 0.05]], F32)
    labels = np.zeros((1, 4), np.int64)
    common = dict(conf_threshold=0.1, iou_threshold=0.5, class_agnostic=True, pre_nms_topk=10, max_detections=10)
    (_, s, _), = run_postprocess(boxes, scores, labels, apply_nms=False, **common)
    assert s.tolist() == [F32(0.9), F32(0.8), F32(0.3)]
    (_, s, _), = run_postprocess(boxes, scores, labels, apply_nms=True, **common)
    assert s.tolist() == [F32(0.9)]
    (_, s, _), = run_postprocess(boxes, scores, labels, apply_nms=False, **{**common, "max_detections": 2})
    assert s.tolist() == [F32(0.9), F32(0.8)]


def test_batch_with_different_counts():
    rng = np.random.default_rng(5)
    boxes, scores, labels = batch_of(rng, 4, 300)
    scores[1] = 0.01                                           # nothing passes conf
    scores[2] = 0.01
    scores[2, 17] = 0.9                                        # exactly one passes
    scores[3, 40:] = 0.01                                      # fewer candidates than image 0
    got = run_postprocess(boxes, scores, labels, conf_threshold=0.25, iou_threshold=0.5,
                          class_agnostic=False, pre_nms_topk=100, max_detections=300)
    counts = [len(s) for _, s, _ in got]
    assert counts[1] == 0 and counts[2] == 1 and counts[0] > counts[3] > 5
    assert got[1][0].shape == (0, 4)


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("conf,topk,max_det", [(0.001, 1000, 300), (0.25, 50, 300), (0.5, 1000, 7)])
def test_postprocess_random_matches_oracles(agnostic, conf, topk, max_det):
    rng = np.random.default_rng(int(conf * 1000) + topk + max_det)
    boxes, scores, labels = batch_of(rng, 2, 400, levels=40)   # ties at the top-k cut too
    run_postprocess(boxes, scores, labels, conf_threshold=conf, iou_threshold=0.5, class_agnostic=agnostic,
                    pre_nms_topk=topk, max_detections=max_det)


@pytest.mark.parametrize("field,value,match", [
    ("conf_threshold", -0.1, "conf_threshold"), ("conf_threshold", float("nan"), "conf_threshold"),
    ("pre_nms_topk", 0, "pre_nms_topk"), ("pre_nms_topk", 2.5, "pre_nms_topk"),
    ("max_detections", 0, "max_detections"),
])
def test_postprocess_option_errors(field, value, match):
    kw = dict(conf_threshold=0.25, iou_threshold=0.5, class_agnostic=False, pre_nms_topk=10, max_detections=10)
    kw[field] = value
    with pytest.raises(InputError, match=match):
        rt.postprocess(np.zeros((1, 2, 4), F32), np.zeros((1, 2), F32), np.zeros((1, 2), np.int64), **kw)


def test_postprocess_shape_errors():
    kw = dict(conf_threshold=0.25, iou_threshold=0.5, class_agnostic=False, pre_nms_topk=10, max_detections=10)
    with pytest.raises(InputError, match=r"boxes must have shape \[B, N, 4\]"):
        rt.postprocess(np.zeros((2, 4), F32), np.zeros((1, 2), F32), np.zeros((1, 2), np.int64), **kw)
    with pytest.raises(InputError, match=r"scores must be a numeric \[1, 2\]"):
        rt.postprocess(np.zeros((1, 2, 4), F32), np.zeros((1, 3), F32), np.zeros((1, 2), np.int64), **kw)
    with pytest.raises(InputError, match=r"labels must be an integer \[1, 2\]"):
        rt.postprocess(np.zeros((1, 2, 4), F32), np.zeros((1, 2), F32), np.zeros((1, 2), F32), **kw)
