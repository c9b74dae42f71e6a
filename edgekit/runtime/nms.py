"""Non-maximum suppression and detection post-processing in numpy (never torch).

Semantics — the same as ONNX ``NonMaxSuppression`` (ONNX Runtime CPU kernel) and torchvision ``nms``:

- Boxes are xyxy. ``IoU(a, b) = inter / (area_a + area_b - inter)``, evaluated in float32 in exactly
  that order of operations (the order of ONNX Runtime's kernel), so IoU values agree bit for bit.
- A box with width or height <= 0, or with a non-finite coordinate, is *empty*: its IoU with every
  box is 0, so it is never suppressed and never suppresses. (ONNX Runtime swaps inverted corners
  instead; decoders never produce inverted boxes, so edgekit treats them as empty.)
- Greedy: visit the boxes by descending score — a *stable* sort, so equal scores go in index order —
  and keep a box unless its IoU with an already kept box is STRICTLY greater than ``iou_threshold``
  (compared in float32, as ONNX Runtime does). A pair with IoU exactly equal to the threshold survives.
- Class-aware NMS: a box can only be suppressed by a kept box with the same label.

How it is computed — exact, and without a Python loop over the boxes:

1. Candidate pairs by sweep-and-prune. IoU <= iw / w_p (iw: overlap width), so IoU > t needs
   iw > t * w_p. Sorted by (label, x1), the boxes that box p can reach are the ones after it with
   its label and ``x1 < x2_p - t * w_p``: one contiguous run, found with ``searchsorted``.
   Class-aware NMS therefore costs only same-class, sufficiently x-overlapping pairs. This is the exact form of the
   usual "offset each class by label * (max_coord + 1)" trick: that trick moves coordinates onto a coarser float32 grid
   (at 80 classes x 640 px the float32 step is ~0.004 px), which can flip a pair that sits on the
   threshold, and it breaks for negative coordinates.
2. IoU on those pairs (vectorised, bounded memory); a pair with IoU > threshold becomes an edge
   "higher-ranked box -> lower-ranked box" (rank = position in the descending-score order).
3. Greedy on the edge list. Greedy NMS is the unique solution of
       keep[j] = not any(keep[i] for every edge i -> j)                                  (*)
   (unique: by induction over rank, since every edge goes from a lower to a higher rank). We iterate
   ``keep <- f(keep)`` from all-True. If two successive iterates agree on ranks [0, p), the later one
   satisfies (*) on [0, p) — each keep[j] reads only ranks < j — so it *is* the greedy answer there;
   the agreeing prefix grows by at least one rank per round, and when an iterate repeats it is the
   answer everywhere. Real detections converge in a handful of rounds (the depth of "suppressed box
   that would have suppressed another" chains); a deep chain falls back after ``_MAX_FIXPOINT_ROUNDS``
   to a sequential pass over the boxes that have outgoing edges, starting from the settled prefix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgekit.errors import InputError

__all__ = ["batched_nms", "box_iou", "nms", "postprocess"]

# Upper bound on candidate pairs whose IoU is evaluated at once (memory: ~a dozen int64/float32
# temporaries of this length, some 60 MB at 2**20; pre-NMS top-k keeps real inputs far below it).
_PAIR_CHUNK = 1 << 20
# Rounds of the fixpoint iteration (*) before the sequential fallback.
_MAX_FIXPOINT_ROUNDS = 32


# --------------------------------------------------------------------------------------------------
# Input checks: one line saying what was wrong and what was expected.

def _check_boxes(boxes: Any, where: str, batched: bool = False) -> np.ndarray:
    """``boxes`` as float32 ``[N, 4]`` (``[B, N, 4]`` when ``batched``) xyxy, or one InputError line."""
    shape = "[B, N, 4]" if batched else "[N, 4]"
    try:
        arr = np.asarray(boxes, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: boxes must be a numeric {shape} xyxy array ({exc})") from None
    if arr.ndim != (3 if batched else 2) or arr.shape[-1] != 4:
        raise InputError(f"{where}: boxes must have shape {shape} (xyxy), got {tuple(arr.shape)}")
    return arr


def _check_vector(values: Any, n: int, kinds: str, what: str, where: str) -> np.ndarray:
    """``values`` as an [n] array whose dtype kind is one of ``kinds`` (``what`` names it in the error)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in kinds:
        raise InputError(f"{where}: {what} must be a{'n integer' if kinds == 'iub' else ' numeric'} [N] array, "
                         f"got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise InputError(f"{where}: {what} must have shape [{n}] to match boxes, got {tuple(arr.shape)}")
    return arr


def _check_scores(scores: Any, n: int, where: str) -> np.ndarray:
    arr = _check_vector(scores, n, "fiub", "scores", where)
    # Negating unsigned integers wraps around; sort real numbers.
    return arr if arr.dtype.kind == "f" else arr.astype(np.float64)


def _check_labels(labels: Any, n: int, where: str) -> np.ndarray:
    return _check_vector(labels, n, "iub", "labels", where).astype(np.int64, copy=False)


def check_iou_threshold(iou_threshold: Any, where: str) -> float:
    """``iou_threshold`` as a float in [0, 1] (NaN refused), else InputError naming ``where``."""
    try:
        value = float(iou_threshold)
    except (TypeError, ValueError):
        raise InputError(f"{where}: iou_threshold must be a number in [0, 1], got {iou_threshold!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise InputError(f"{where}: iou_threshold must be in [0, 1], got {iou_threshold!r}")
    return value


def _check_iou_threshold(iou_threshold: Any, where: str) -> np.float32:
    # ONNX Runtime compares float32 IoU with a float32 threshold; do the same (0.3 -> 0.30000001).
    return np.float32(check_iou_threshold(iou_threshold, where))


def _check_count(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{where}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------------
# IoU

def _areas(boxes: np.ndarray) -> np.ndarray:
    """float32 [N]: (x2 - x1) * (y2 - y1), 0 for inverted boxes, NaN for NaN coordinates."""
    w = np.maximum(boxes[:, 2] - boxes[:, 0], np.float32(0))
    h = np.maximum(boxes[:, 3] - boxes[:, 1], np.float32(0))
    return w * h


def _iou_from_overlap(inter_w: np.ndarray, inter_h: np.ndarray, area_a: np.ndarray,
                      area_b: np.ndarray) -> np.ndarray:
    """IoU (float32) from the overlap extents ``inter_w = min(x2) - max(x1)``, ``inter_h`` likewise.

    Order of operations as in ONNX Runtime: inter = iw * ih (0 if iw or ih <= 0);
    union = (area_a + area_b) - inter; IoU = inter / union, and 0 unless union > 0.
    An empty box has iw or ih <= 0 with anything, so inter = 0 and IoU = 0. A NaN coordinate makes
    the union NaN, and an infinite one makes it infinite (IoU = finite / inf = 0) or NaN (inf - inf):
    IoU 0 in every case. All arguments broadcast.
    """
    inter = np.maximum(inter_w, np.float32(0)) * np.maximum(inter_h, np.float32(0))
    with np.errstate(invalid="ignore"):             # inf - inf for boxes with infinite coordinates
        union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros(union.shape, np.float32), where=union > 0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``a`` [N, 4] and ``b`` [M, 4] -> float32 [N, M].

    Empty boxes (zero or negative width/height, non-finite coordinates) have IoU 0 with everything,
    and so has any pair whose union is 0.
    """
    a = _check_boxes(a, "box_iou")
    b = _check_boxes(b, "box_iou")
    inter_w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    inter_h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return _iou_from_overlap(inter_w, inter_h, _areas(a)[:, None], _areas(b)[None, :])


# --------------------------------------------------------------------------------------------------
# Greedy NMS on boxes already sorted by descending score

def _suppression_edges(boxes: np.ndarray, labels: np.ndarray | None,
                       threshold: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Edges (src, dst), src < dst, between ranks of score-sorted ``boxes`` whose IoU > threshold.

    With ``labels``, only same-label pairs are considered. See the module docstring, steps 1-2.
    """
    areas = _areas(boxes)
    # Only non-empty, finite boxes can have IoU > 0 (a non-finite one has an infinite or NaN area,
    # which makes every IoU with it 0 or NaN -> 0).
    usable = np.flatnonzero(np.isfinite(boxes).all(axis=1) & (areas > 0) & np.isfinite(areas))
    no_edges = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if len(usable) < 2:
        return no_edges

    # Sweep order: by label, then x1 (two stable sorts = a lexicographic sort).
    sweep = usable[np.argsort(boxes[usable, 0], kind="stable")]
    if labels is not None:
        sweep = sweep[np.argsort(labels[sweep], kind="stable")]
    # Contiguous 1-D arrays in sweep order: pairs gather from these, never rows of ``boxes``.
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[sweep, k]) for k in range(4))
    area = areas[sweep]
    group = labels[sweep] if labels is not None else np.zeros(len(sweep), np.int64)

    # Which later boxes can box p reach? union >= area_p = w_p * h_p and ih <= h_p, so
    #     IoU <= iw / w_p,  hence  IoU > t  =>  iw > t * w_p.
    # A partner q after p in sweep order (x1_q >= x1_p) has iw <= x2_p - x1_q, so only q with
    #     x1_q < x2_p - t * w_p
    # can be suppressed by or suppress p. The float32 IoU is within a few ulps (< 1e-6 relative) of
    # the real one for boxes of normal float32 area, so a window with t * (1 - 1e-4) never misses a
    # pair whose float32 IoU is > t. At t = 0 the window is x1_q <= x2_p: every x-overlapping pair.
    # One float64 key per box shifts each label onto its own interval of the real line, so a single
    # searchsorted finds the end of every box's run. The window's end is widened by 4 ulps to absorb
    # the float64 rounding of the keys (rounding is monotonic, so a wider window is only a superset).
    # Where the label shift no longer separates labels (astronomic coordinates), runs are clipped at
    # the end of the label group anyway.
    x1_64, x2_64 = x1.astype(np.float64), x2.astype(np.float64)
    need = float(threshold) * (1.0 - 1e-4)
    lo = min(x1_64.min(), x2_64.min())
    span = max(x1_64.max(), x2_64.max()) - lo + 1.0
    shift = (group - group[0]) * span - lo          # group[0] is the smallest label
    window_end = x2_64 - need * (x2_64 - x1_64) + shift
    window_end += 4 * np.spacing(np.abs(window_end))
    reach = np.searchsorted(x1_64 + shift, window_end, side="right")
    group_end = np.searchsorted(group, group, side="right")
    counts = np.maximum(np.minimum(reach, group_end) - np.arange(1, len(sweep) + 1), 0)
    totals = np.cumsum(counts)

    sources, targets = [], []
    first = 0
    while first < len(sweep):
        # Take sources [first, last) whose pairs fit in one chunk (at least one source).
        done_before = totals[first - 1] if first else 0
        last = max(int(np.searchsorted(totals, done_before + _PAIR_CHUNK, side="right")), first + 1)
        c = counts[first:last]
        total = int(c.sum())
        if total:
            # Expand the runs: source p is paired with sweep positions p+1 .. p+c[p] (all with p's
            # label: runs stop at group_end). q = p + 1 + (offset inside p's run).
            p = np.repeat(np.arange(first, last), c)
            q = np.arange(total) + np.repeat(np.arange(first + 1, last + 1) - (np.cumsum(c) - c), c)
            inter_w = np.minimum(x2[p], x2[q]) - x1[q]      # max(x1_p, x1_q) = x1_q in sweep order
            inter_h = np.minimum(y2[p], y2[q]) - np.maximum(y1[p], y1[q])
            iou = _iou_from_overlap(inter_w, inter_h, area[p], area[q])
            over = iou > threshold
            rank_p, rank_q = sweep[p[over]], sweep[q[over]]
            sources.append(np.minimum(rank_p, rank_q))
            targets.append(np.maximum(rank_p, rank_q))
        first = last
    if not sources:
        return no_edges
    return np.concatenate(sources).astype(np.int64), np.concatenate(targets).astype(np.int64)


def _greedy_from_edges(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """bool [n]: the greedy keep mask, given edges src -> dst (src < dst) meaning "src suppresses dst
    if src is kept". Fixpoint iteration of (*) in the module docstring, exact fallback if it is slow."""
    keep = np.ones(n, dtype=bool)
    if len(src) == 0:
        return keep
    previous = keep
    for _ in range(_MAX_FIXPOINT_ROUNDS):
        suppressed = np.zeros(n, dtype=bool)
        suppressed[dst[keep[src]]] = True
        previous, keep = keep, ~suppressed
        if np.array_equal(previous, keep):
            return keep
    # Ranks before the first disagreement p of the last two iterates are final (module docstring),
    # and so is rank p in the later iterate: it was computed from the final ranks < p.
    settled = int(np.flatnonzero(previous != keep)[0]) + 1
    return _greedy_sequential(n, src, dst, keep, settled)


def _greedy_sequential(n: int, src: np.ndarray, dst: np.ndarray, keep: np.ndarray, settled: int) -> np.ndarray:
    """Finish greedy NMS when ``keep[:settled]`` is final: visit boxes with outgoing edges in rank order.

    The loop runs over suppressing candidates of rank >= settled only (each step is vectorised over
    that box's edges); when box s is reached, every edge into s comes from a rank < s already applied.
    """
    suppressed = np.zeros(n, dtype=bool)
    # Kept boxes of the settled prefix suppress their targets (this also re-marks every suppressed
    # box of the prefix: each has an edge from a kept box of lower rank).
    from_settled = src < settled
    suppressed[dst[from_settled & keep[src]]] = True
    rest = np.flatnonzero(~from_settled)
    rest = rest[np.argsort(src[rest], kind="stable")]
    rest_src, rest_dst = src[rest], dst[rest]
    heads, starts = np.unique(rest_src, return_index=True)
    stops = np.append(starts[1:], len(rest_src))
    for head, start, stop in zip(heads.tolist(), starts.tolist(), stops.tolist()):
        if not suppressed[head]:
            suppressed[rest_dst[start:stop]] = True
    return ~suppressed


def _greedy_keep(sorted_boxes: np.ndarray, sorted_labels: np.ndarray | None, threshold: np.float32) -> np.ndarray:
    """bool [N] keep mask for boxes already in descending-score order."""
    src, dst = _suppression_edges(sorted_boxes, sorted_labels, threshold)
    return _greedy_from_edges(len(sorted_boxes), src, dst)


def _descending(scores: np.ndarray) -> np.ndarray:
    """Indices sorting ``scores`` descending; stable, so ties keep index order. NaN sorts last."""
    return np.argsort(-scores, kind="stable").astype(np.int64, copy=False)


def _top_k_descending(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest of ``scores`` (no NaN), descending, ties by index: equal to
    ``_descending(scores)[:k]`` but partitions first, so only k values are sorted."""
    if len(scores) <= k:
        return _descending(scores)
    cut = np.partition(scores, len(scores) - k)[len(scores) - k]   # the k-th highest value
    above = np.flatnonzero(scores > cut)
    at_cut = np.flatnonzero(scores == cut)[:k - len(above)]        # ties at the cut: lowest indices
    chosen = np.concatenate([above, at_cut])
    return chosen[_descending(scores[chosen])]


# --------------------------------------------------------------------------------------------------
# Public API

def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Single-class greedy NMS.

    boxes: [N, 4] xyxy (any real dtype; evaluated in float32). scores: [N].
    Returns int64 [K] indices into the input of the kept boxes, in descending score order (ties by
    index). A box is suppressed iff its IoU with a kept higher-ranked box is > ``iou_threshold``.
    """
    boxes = _check_boxes(boxes, "nms")
    scores = _check_scores(scores, len(boxes), "nms")
    threshold = _check_iou_threshold(iou_threshold, "nms")
    order = _descending(scores)
    return order[_greedy_keep(boxes[order], None, threshold)]


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float,
                class_agnostic: bool = False) -> np.ndarray:
    """Greedy NMS where a box can only suppress boxes of its own label (``class_agnostic`` ignores labels).

    boxes: [N, 4] xyxy; scores: [N]; labels: int [N]. Returns int64 [K] indices into the input, in
    descending score order over all classes (ties by index). Equal to running :func:`nms` per class
    and merging the kept indices by score.
    """
    boxes = _check_boxes(boxes, "batched_nms")
    scores = _check_scores(scores, len(boxes), "batched_nms")
    labels = _check_labels(labels, len(boxes), "batched_nms")
    threshold = _check_iou_threshold(iou_threshold, "batched_nms")
    order = _descending(scores)
    return order[_greedy_keep(boxes[order], None if class_agnostic else labels[order], threshold)]


def postprocess(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, conf_threshold: float,
                iou_threshold: float, class_agnostic: bool, pre_nms_topk: int, max_detections: int,
                apply_nms: bool = True) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Score threshold, pre-NMS top-k, NMS and max-detections for a batch of decoded candidates.

    boxes: float [B, N, 4] xyxy; scores: float [B, N]; labels: int [B, N].
    Per image: keep ``score > conf_threshold`` (strict, in float32), then the ``pre_nms_topk`` highest scores
    (ties by index), then NMS (class-aware unless ``class_agnostic``; skipped when ``apply_nms`` is
    False, e.g. CenterNet), then at most ``max_detections``.
    Returns one ``(boxes float32 [K, 4], scores float32 [K] descending, labels int64 [K])`` per image.
    """
    where = "postprocess"
    boxes = _check_boxes(boxes, where, batched=True)
    batch, n = boxes.shape[:2]
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.shape != (batch, n) or scores.dtype.kind not in "fiu":
        raise InputError(f"{where}: scores must be a numeric [{batch}, {n}] array to match boxes, "
                         f"got {tuple(scores.shape)} {scores.dtype}")
    if labels.shape != (batch, n) or labels.dtype.kind not in "iub":
        raise InputError(f"{where}: labels must be an integer [{batch}, {n}] array to match boxes, "
                         f"got {tuple(labels.shape)} {labels.dtype}")
    try:
        conf = float(conf_threshold)
    except (TypeError, ValueError):
        raise InputError(f"{where}: conf_threshold must be a number in [0, 1], got {conf_threshold!r}") from None
    if not (math.isfinite(conf) and 0.0 <= conf <= 1.0):
        raise InputError(f"{where}: conf_threshold must be in [0, 1], got {conf_threshold!r}")
    threshold = _check_iou_threshold(iou_threshold, where)
    topk = _check_count(pre_nms_topk, "pre_nms_topk", where)
    max_det = _check_count(max_detections, "max_detections", where)
    # Scores are float32 end to end, and the threshold is compared in float32 (as ONNX Runtime's
    # score_threshold is): a score of exactly float32(0.001) does not pass conf_threshold=0.001.
    scores = scores.astype(np.float32, copy=False)
    conf32 = np.float32(conf)

    results = []
    for image_boxes, image_scores, image_labels in zip(boxes, scores, labels):
        candidates = np.flatnonzero(image_scores > conf32)        # NaN scores fail '>'
        # The top-k by score, descending; ties (also at the cut) go to the lower index.
        candidates = candidates[_top_k_descending(image_scores[candidates], topk)]
        if apply_nms and len(candidates) > 1:
            sorted_labels = None if class_agnostic else image_labels[candidates].astype(np.int64)
            candidates = candidates[_greedy_keep(image_boxes[candidates], sorted_labels, threshold)]
        candidates = candidates[:max_det]
        results.append((np.ascontiguousarray(image_boxes[candidates], dtype=np.float32),
                        image_scores[candidates],
                        image_labels[candidates].astype(np.int64)))
    return results
