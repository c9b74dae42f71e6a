"""Head decoders: raw network outputs -> per-candidate boxes, scores and labels (numpy only).

One decoder per head kind, registered by name. Each implements exactly the raw output
contract in the ``edgekit.spec`` module docstring; ``edgekit.reference.decode`` is the
independent torch oracle the parity tests compare against.

Every decoder returns :class:`Candidates` for the whole batch, before any score threshold
or NMS (that is ``edgekit.runtime.nms``'s job):

- ``boxes``  float32 ``[B, N, 4]`` xyxy in network-input pixels, not clipped;
- ``scores`` float32 ``[B, N]``, the best-class score of each candidate;
- ``labels`` int64 ``[B, N]``, the best class index (0..nc-1).

Candidate order is part of the contract (the torch reference uses the same one):

- grid heads (``yolox``, ``dfl``, ``fastestdet``): level by level, cells row-major;
- ``yolo_anchor``: level by level, then anchor, then cells row-major (YOLOv5 order);
- ``ssd``: the prior order of :func:`ssd_priors`;
- ``centernet``: the ``topk`` best (class, cell) peaks by score, descending; equal scores are
  ordered by ascending flat index ``class * H * W + cell``.

No Python loop runs over cells or candidates: only over pyramid levels. Inputs may be float16
(fp16 backends); all arithmetic is in float32.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from edgekit.errors import OutputError, SpecError
from edgekit.registry import DecoratorRegistry
from edgekit.runtime.graph_nms import HEAD_KIND as GRAPH_NMS_HEAD
from edgekit.runtime.graph_nms import ROW_COLUMNS
from edgekit.spec import ModelSpec


@dataclass(frozen=True)
class Candidates:
    """Decoded candidates for a batch, before thresholding and NMS.

    boxes: float32 [B, N, 4], xyxy in network-input pixels (not clipped).
    scores: float32 [B, N], best-class score per candidate.
    labels: int64 [B, N], best class index (0..nc-1; for ``ssd`` the background class is
        removed, so 0 is the first real class).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


#: (outputs, spec, score_threshold) -> Candidates. ``score_threshold`` (None: decode everything) lets a
#: decoder skip the box math of candidates whose score is <= it: they will be dropped by the score
#: filter anyway; their boxes are then left at 0. Scores and labels are always complete.
DecoderFn = Callable[[Sequence[np.ndarray], ModelSpec, "float | None"], Candidates]

#: head kind -> decoder, filled by ``@register_decoder(kind)`` below.
DECODERS: DecoratorRegistry[DecoderFn] = DecoratorRegistry("head kind", SpecError)
register_decoder = DECODERS.register
#: The decoder of a head kind; SpecError listing the known kinds otherwise.
get_decoder = DECODERS.lookup


def decode(outputs: Sequence[np.ndarray], spec: ModelSpec,
           score_threshold: float | None = None) -> Candidates:
    """Decode raw head outputs (in ``spec.head.output_names`` order) into :class:`Candidates`.

    Converts each output to float32 (no copy when it already is) and rejects NaN/inf once
    here, so that the individual decoders only deal with shapes and math.
    """
    decoder = get_decoder(spec.head.kind)
    names = spec.head.output_names
    if len(outputs) != len(names):
        raise OutputError(
            f"head {spec.head.kind!r} expects {len(names)} output(s) {list(names)}, got {len(outputs)}")
    arrays = []
    for name, out in zip(names, outputs):
        arr = _as_float32(out)
        if not np.isfinite(arr).all():
            what = "NaN" if np.isnan(arr).any() else "inf"
            raise OutputError(
                f"model output {name!r} contains {what} values (head kind {spec.head.kind!r}); "
                "the backend or its precision produced invalid numbers")
        arrays.append(arr)
    return decoder(arrays, spec, score_threshold)


# --- shared helpers --------------------------------------------------------------------------

_MISSING = object()


def _as_float32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in float32; exp overflow for x < -88 correctly gives 0, so silence it."""
    with np.errstate(over="ignore"):
        out = np.exp(-x)
    out += 1.0
    np.reciprocal(out, out=out)
    return out


def _param(spec: ModelSpec, name: str, default: Any = _MISSING) -> Any:
    params = spec.head.params
    if name in params and params[name] is not None:
        return params[name]
    if default is _MISSING:
        raise SpecError(
            f"head kind {spec.head.kind!r} needs parameter {name!r} in spec.head.params "
            f"(got {sorted(params)})")
    return default


def _output_name(spec: ModelSpec, index: int) -> str:
    names = spec.head.output_names
    return names[index] if index < len(names) else f"#{index}"


def _check_count(outputs: Sequence[np.ndarray], expected: int, spec: ModelSpec, why: str) -> None:
    if len(outputs) != expected:
        raise OutputError(f"head {spec.head.kind!r} expects {expected} output(s) ({why}), got {len(outputs)}")


def _check_shape(arr: np.ndarray, index: int, spec: ModelSpec, expected: Sequence[int | None],
                 expected_text: str, batch: int | None = None) -> None:
    """``expected`` lists each dim or None for free dims; ``batch`` (if known) pins dim 0."""
    want = list(expected)
    if batch is not None:
        want[0] = batch
    ok = arr.ndim == len(want) and all(w is None or w == s for w, s in zip(want, arr.shape))
    if not ok:
        raise OutputError(
            f"head {spec.head.kind!r} output {index} ({_output_name(spec, index)!r}): expected shape "
            f"{expected_text}, got {tuple(arr.shape)}")


def _check_grid(h: int, w: int, stride: float, index: int, spec: ModelSpec) -> None:
    """A level's grid must be input / stride (floor or ceil): catches outputs given out of order."""
    in_h, in_w = spec.input_size
    ok_h = h in (in_h // stride, math.ceil(in_h / stride))
    ok_w = w in (in_w // stride, math.ceil(in_w / stride))
    if not (ok_h and ok_w):
        raise OutputError(
            f"head {spec.head.kind!r} output {index} ({_output_name(spec, index)!r}): grid {h}x{w} does not "
            f"match input {in_h}x{in_w} / stride {stride:g} (expected about {in_h / stride:g}x{in_w / stride:g}); "
            "are the outputs out of order, or is spec.input_size wrong?")


@lru_cache(maxsize=64)
def _cell_xy(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Column and row index of each cell, row-major: float32 [H*W] each (read-only, cached)."""
    gx = np.tile(np.arange(w, dtype=np.float32), h)
    gy = np.repeat(np.arange(h, dtype=np.float32), w)
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


def _strides(spec: ModelSpec) -> list[float]:
    strides = _param(spec, "strides")
    if not isinstance(strides, (list, tuple)) or not strides:
        raise SpecError(f"head kind {spec.head.kind!r}: params.strides must be a non-empty list, got {strides!r}")
    return [float(s) for s in strides]


def _best_class(logits: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(max, argmax) of ``logits`` along ``axis`` in one heavy pass (argmax) plus a gather."""
    labels = np.argmax(logits, axis=axis)
    best = np.take_along_axis(logits, np.expand_dims(labels, axis), axis=axis).squeeze(axis)
    return best, labels


def _write_xyxy(boxes: np.ndarray, cx: np.ndarray, cy: np.ndarray, w: np.ndarray, h: np.ndarray) -> None:
    """boxes[..., :] = centre -/+ half size, written in place (boxes is a [B, n, 4] slice)."""
    half_w = 0.5 * w
    half_h = 0.5 * h
    np.subtract(cx, half_w, out=boxes[..., 0])
    np.subtract(cy, half_h, out=boxes[..., 1])
    np.add(cx, half_w, out=boxes[..., 2])
    np.add(cy, half_h, out=boxes[..., 3])


def _allocate(batch: int, n: int) -> Candidates:
    """Candidates for ``n`` boxes per image; the decoders pass the first output's dim 0, the batch
    ``_check_shape`` made every (4-D) output share."""
    return Candidates(np.empty((batch, n, 4), np.float32), np.empty((batch, n), np.float32),
                      np.empty((batch, n), np.int64))


# --- yolo_anchor (YOLOv5 family) ---------------------------------------------------------------

@register_decoder("yolo_anchor")
def decode_yolo_anchor(outputs: Sequence[np.ndarray], spec: ModelSpec,
                       score_threshold: float | None = None) -> Candidates:
    """YOLOv5 anchor head: per level ``[B, na*(5+nc), H, W]``, channels (anchor, [x, y, w, h, obj, cls...]).

    xy = (2*sig(t_xy) - 0.5 + cell) * stride, wh = (2*sig(t_wh))^2 * anchor,
    score = sig(obj) * max_c sig(cls_c) = sig(obj) * sig(max_c cls_c) (sigmoid is monotonic,
    so only one sigmoid per candidate is needed for the classes).
    """
    strides = _strides(spec)
    anchors_param = _param(spec, "anchors")
    if not isinstance(anchors_param, (list, tuple)) or len(anchors_param) != len(strides):
        raise SpecError(f"head kind 'yolo_anchor': params.anchors must have one list per stride "
                        f"({len(strides)}), got {anchors_param!r}")
    anchors = []
    for level in anchors_param:
        a = np.asarray(level, dtype=np.float32)
        if a.size == 0 or a.size % 2:
            raise SpecError(f"head kind 'yolo_anchor': each anchors level must be a list of [w, h] pairs, got {level!r}")
        anchors.append(a.reshape(-1, 2))
    _check_count(outputs, len(strides), spec, f"one per stride {strides}")
    nc = spec.num_classes
    no = 5 + nc
    arrays = [_as_float32(o) for o in outputs]
    batch = arrays[0].shape[0] if arrays[0].ndim else None
    sizes = []
    for i, (arr, a) in enumerate(zip(arrays, anchors)):
        na = len(a)
        _check_shape(arr, i, spec, (None, na * no, None, None),
                     f"[B, {na * no}, H, W] ({na} anchors x (5 + {nc} classes))", batch)
        _check_grid(arr.shape[2], arr.shape[3], strides[i], i, spec)
        sizes.append(na * arr.shape[2] * arr.shape[3])
    result = _allocate(arrays[0].shape[0], sum(sizes))
    start = 0
    for arr, a, stride, n in zip(arrays, anchors, strides, sizes):
        b, _, h, w = arr.shape
        na = len(a)
        x = arr.reshape(b, na, no, h * w)
        gx, gy = _cell_xy(h, w)
        box = _sigmoid(x[:, :, :5])  # [B, na, 5, HW]: x, y, w, h, obj
        cx = (box[:, :, 0] * 2.0 - 0.5 + gx) * stride  # [B, na, HW], fresh arrays: reshape is a view
        cy = (box[:, :, 1] * 2.0 - 0.5 + gy) * stride
        bw = np.square(box[:, :, 2] * 2.0) * a[:, 0:1]
        bh = np.square(box[:, :, 3] * 2.0) * a[:, 1:2]
        _write_xyxy(result.boxes[:, start:start + n], cx.reshape(b, n), cy.reshape(b, n),
                    bw.reshape(b, n), bh.reshape(b, n))
        best, labels = _best_class(x[:, :, 5:], axis=2)  # [B, na, HW]
        result.scores[:, start:start + n] = (box[:, :, 4] * _sigmoid(best)).reshape(b, n)
        result.labels[:, start:start + n] = labels.reshape(b, n)
        start += n
    return result


# --- yolox -------------------------------------------------------------------------------------

@register_decoder("yolox")
def decode_yolox(outputs: Sequence[np.ndarray], spec: ModelSpec,
                 score_threshold: float | None = None) -> Candidates:
    """YOLOX anchor-free head: per level ``[B, 4+1+nc, H, W]`` = (reg, obj logit, cls logits).

    xy = (reg_xy + cell) * stride, wh = exp(reg_wh) * stride, score = sig(obj) * sig(max_c cls_c).
    """
    strides = _strides(spec)
    _check_count(outputs, len(strides), spec, f"one per stride {strides}")
    nc = spec.num_classes
    arrays = [_as_float32(o) for o in outputs]
    batch = arrays[0].shape[0] if arrays[0].ndim else None
    for i, arr in enumerate(arrays):
        _check_shape(arr, i, spec, (None, 5 + nc, None, None), f"[B, {5 + nc}, H, W] (4 reg + obj + {nc} classes)", batch)
        _check_grid(arr.shape[2], arr.shape[3], strides[i], i, spec)
    result = _allocate(arrays[0].shape[0], sum(a.shape[2] * a.shape[3] for a in arrays))
    for cells, x, gx, gy, stride in _grid_levels(arrays, strides):
        cx = (x[:, 0] + gx) * stride
        cy = (x[:, 1] + gy) * stride
        bw = np.exp(x[:, 2]) * stride
        bh = np.exp(x[:, 3]) * stride
        _write_xyxy(result.boxes[:, cells], cx, cy, bw, bh)
        best, labels = _best_class(x[:, 5:], axis=1)
        np.multiply(_sigmoid(x[:, 4]), _sigmoid(best), out=result.scores[:, cells])
        result.labels[:, cells] = labels
    return result


def _grid_levels(arrays: Sequence[np.ndarray], strides: Sequence[float]):
    """Per level of a grid head ``[B, C, H, W]``: (the level's slice of the candidates, the level as
    [B, C, H*W], cell x and y [H*W] row-major, stride). Candidates run level by level, cells row-major."""
    start = 0
    for arr, stride in zip(arrays, strides):
        b, c, h, w = arr.shape
        gx, gy = _cell_xy(h, w)
        yield slice(start, start + h * w), arr.reshape(b, c, h * w), gx, gy, stride
        start += h * w


# --- dfl (YOLOv8 / v11 family) -----------------------------------------------------------------

@register_decoder("dfl")
def decode_dfl(outputs: Sequence[np.ndarray], spec: ModelSpec,
               score_threshold: float | None = None) -> Candidates:
    """Distribution-focal-loss head: per level ``[B, 4*reg_max + nc, H, W]``.

    The first 4*reg_max channels are (side in l, t, r, b) x (bin 0..reg_max-1) logits; each
    side's distance is the expectation sum_i softmax(bins)_i * i, in stride units, measured from
    the anchor point (cell + 0.5) * stride. reg_max == 1 (YOLO26) means no bins: the 4 channels are the
    raw ltrb distances in stride units. score = sig(max_c cls_c) (no objectness).
    """
    strides = _strides(spec)
    reg_max = int(_param(spec, "reg_max"))
    if reg_max < 1:
        raise SpecError(f"head kind 'dfl': params.reg_max must be >= 1, got {reg_max}")
    _check_count(outputs, len(strides), spec, f"one per stride {strides}")
    nc = spec.num_classes
    arrays = [_as_float32(o) for o in outputs]
    batch = arrays[0].shape[0] if arrays[0].ndim else None
    for i, arr in enumerate(arrays):
        _check_shape(arr, i, spec, (None, 4 * reg_max + nc, None, None),
                     f"[B, {4 * reg_max + nc}, H, W] (4 x reg_max {reg_max} + {nc} classes)", batch)
        _check_grid(arr.shape[2], arr.shape[3], strides[i], i, spec)
    bin_index = np.arange(reg_max, dtype=np.float32)
    one2one_topk = spec.head.params.get("one2one_topk")
    if one2one_topk is not None:
        if int(one2one_topk) < 1:
            raise SpecError(f"head kind 'dfl': params.one2one_topk must be >= 1, got {one2one_topk}")
        # every anchor's box is needed before the selection; the end-to-end K is small, so is the extra work
        everything = decode_dfl(outputs, replace(spec, head=replace(spec.head, params={
            k: v for k, v in spec.head.params.items() if k != "one2one_topk"})), None)
        class_logits = np.concatenate([a.reshape(a.shape[0], a.shape[1], -1)[:, 4 * reg_max:] for a in arrays], 2)
        return _one_to_one(everything.boxes, _sigmoid(class_logits.transpose(0, 2, 1)), int(one2one_topk))
    result = _allocate(arrays[0].shape[0], sum(a.shape[2] * a.shape[3] for a in arrays))
    for cells, x, gx, gy, stride in _grid_levels(arrays, strides):
        b = x.shape[0]
        out = result.boxes[:, cells]
        if score_threshold is None:
            best, labels = _best_class(x[:, 4 * reg_max:], axis=1)
            result.scores[:, cells] = _sigmoid(best)
            result.labels[:, cells] = labels
            _dfl_boxes(x[:, :4 * reg_max], gx, gy, stride, reg_max, bin_index, out)
        else:
            # Only cells that can pass the score filter need the argmax and the DFL softmax (the
            # two costliest steps): max over classes is one contiguous reduction; sigmoid is monotonic.
            best = x[:, 4 * reg_max:].max(axis=1)  # [B, n]
            scores = _sigmoid(best)
            result.scores[:, cells] = scores
            result.labels[:, cells] = 0
            out[...] = 0.0
            for image in range(b):
                keep = np.flatnonzero(scores[image] > score_threshold)
                if keep.size == 0:
                    continue
                result.labels[image, cells.start + keep] = np.argmax(x[image, 4 * reg_max:, keep], axis=1)
                sub = np.empty((1, keep.size, 4), np.float32)
                _dfl_boxes(x[image:image + 1, :4 * reg_max, keep], gx[keep], gy[keep], stride, reg_max, bin_index, sub)
                out[image, keep] = sub[0]
    return result


def _one_to_one(boxes: np.ndarray, class_scores: np.ndarray, k: int) -> Candidates:
    """End-to-end selection of a one-to-one head: boxes [B, N, 4] xyxy, class_scores [B, N, nc] in [0, 1].

    Stage 1: the k1 = min(k, N) anchors with the highest max-class score. Stage 2: among their k1 * nc
    (anchor, class) pairs, flattened anchor-major (pair p = anchor slot * nc + class), the min(k, k1 * nc) highest
    scores. Both stages sort descending with ties to the lower index (a stable sort of the negated scores).
    Returns Candidates with one row per selected pair, in descending score order: [B, K, 4] / [B, K] / [B, K].
    """
    b, n, nc = class_scores.shape
    k1 = min(k, n)
    k2 = min(k, k1 * nc)
    out = _allocate(b, k2)
    for image in range(b):
        anchors = np.argsort(-class_scores[image].max(axis=1), kind="stable")[:k1]
        pairs = class_scores[image, anchors].reshape(-1)  # anchor-major
        best = np.argsort(-pairs, kind="stable")[:k2]
        chosen = anchors[best // nc]
        out.boxes[image] = boxes[image, chosen]
        out.scores[image] = pairs[best]
        out.labels[image] = best % nc
    return out


def _dfl_boxes(bins_flat: np.ndarray, gx: np.ndarray, gy: np.ndarray, stride: float, reg_max: int,
               bin_index: np.ndarray, out: np.ndarray) -> None:
    """DFL box regression into ``out`` [B, n, 4] (xyxy): ``bins_flat`` [B, 4*reg_max, n] logits.

    Each side's distance is the softmax expectation ``sum_i e_i * i / sum_i e_i`` with
    ``e_i = exp(bin_i - max bin)`` (stable), times the stride, from the anchor (cell + 0.5) * stride.
    """
    b, _, n = bins_flat.shape
    if reg_max == 1:  # YOLO26: no bins, the 4 channels are the ltrb distances in stride units
        dist = bins_flat * np.float32(stride)  # [B, 4, n], a fresh array
    else:
        bins = bins_flat.reshape(b, 4, reg_max, n)
        e = bins - bins.max(axis=2, keepdims=True)
        np.exp(e, out=e)
        dist = np.matmul(bin_index, e)  # [B, 4, n]
        dist /= e.sum(axis=2)
        dist *= stride
    ax = (gx + 0.5) * stride
    ay = (gy + 0.5) * stride
    np.subtract(ax, dist[:, 0], out=out[..., 0])
    np.subtract(ay, dist[:, 1], out=out[..., 1])
    np.add(ax, dist[:, 2], out=out[..., 2])
    np.add(ay, dist[:, 3], out=out[..., 3])


# --- centernet ---------------------------------------------------------------------------------

def _max_pool3x3(x: np.ndarray) -> np.ndarray:
    """3x3 max-pool, stride 1, padding 1 (padding never wins) over the last two axes.

    Max over a rectangle is separable: max with the left/right neighbours, then with the
    neighbours above/below; edges simply have fewer neighbours, which is what padding does.
    """
    rows = x.copy()
    np.maximum(rows[..., :, 1:], x[..., :, :-1], out=rows[..., :, 1:])
    np.maximum(rows[..., :, :-1], x[..., :, 1:], out=rows[..., :, :-1])
    out = rows.copy()
    np.maximum(out[..., 1:, :], rows[..., :-1, :], out=out[..., 1:, :])
    np.maximum(out[..., :-1, :], rows[..., 1:, :], out=out[..., :-1, :])
    return out


def _topk_desc(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the top ``k`` of non-negative float32 ``scores`` [B, M] per row: int64 [B, k].

    Order: score descending, equal scores by ascending index (the torch reference's stable sort).
    Only positive entries are ranked (after peak suppression they are few); zeros fill up in
    index order. For non-negative IEEE floats the int32 bit pattern is monotonic in the value,
    so key = bits << 32 | (M - 1 - index) is a unique int64 ordering by (score desc, index asc),
    and a partial sort on unique keys picks a deterministic set.
    """
    b, m = scores.shape
    index = np.empty((b, k), np.int64)
    for i in range(b):  # images only; everything inside is vectorised
        row = scores[i]
        positive = np.flatnonzero(row > 0)
        key = (row[positive].view(np.int32).astype(np.int64) << 32) | (m - 1 - positive)
        if len(key) > k:
            keep = np.argpartition(key, len(key) - k)[len(key) - k:]
            positive, key = positive[keep], key[keep]
        chosen = positive[np.argsort(-key)]
        index[i, :len(chosen)] = chosen
        if len(chosen) < k:
            index[i, len(chosen):] = np.flatnonzero(row == 0)[:k - len(chosen)]
    return index


@register_decoder("centernet")
def decode_centernet(outputs: Sequence[np.ndarray], spec: ModelSpec,
                     score_threshold: float | None = None) -> Candidates:
    """CenterNet: ``heatmap [B, nc, H, W]`` (logits), ``wh [B, 2, H, W]``, ``offset [B, 2, H, W]``.

    heat = sig(heatmap); a (class, cell) is a peak where heat equals its 3x3 max-pool; non-peaks
    score 0. The ``topk`` (default 100) best over classes*cells are kept (N = min(topk, nc*H*W),
    fixed): box = (cell_x + off_x, cell_y + off_y) -/+ (w, h) / 2, times ``stride``.
    """
    stride = float(_param(spec, "stride"))
    topk = int(_param(spec, "topk", 100))
    if topk < 1:
        raise SpecError(f"head kind 'centernet': params.topk must be >= 1, got {topk}")
    _check_count(outputs, 3, spec, "heatmap, wh, offset")
    nc = spec.num_classes
    heatmap, wh, offset = (_as_float32(o) for o in outputs)
    batch = heatmap.shape[0] if heatmap.ndim else None
    _check_shape(heatmap, 0, spec, (None, nc, None, None), f"[B, {nc}, H, W] (heatmap, {nc} classes)", batch)
    b, _, h, w = heatmap.shape
    _check_grid(h, w, stride, 0, spec)
    _check_shape(wh, 1, spec, (b, 2, h, w), f"[{b}, 2, {h}, {w}] (wh, same grid as heatmap)")
    _check_shape(offset, 2, spec, (b, 2, h, w), f"[{b}, 2, {h}, {w}] (offset, same grid as heatmap)")
    heat = _sigmoid(heatmap)
    np.copyto(heat, 0.0, where=heat < _max_pool3x3(heat))  # keep peaks only (heat <= its pool max)
    heat = heat.reshape(b, nc * h * w)
    flat = _topk_desc(heat, min(topk, nc * h * w))
    scores = np.take_along_axis(heat, flat, axis=1)
    labels, cell = np.divmod(flat, h * w)
    gx, gy = _cell_xy(h, w)
    wh_c = np.take_along_axis(wh.reshape(b, 2, h * w), cell[:, None, :], axis=2)  # [B, 2, k]
    off_c = np.take_along_axis(offset.reshape(b, 2, h * w), cell[:, None, :], axis=2)
    boxes = np.empty((b, flat.shape[1], 4), np.float32)
    _write_xyxy(boxes, (gx[cell] + off_c[:, 0]) * stride, (gy[cell] + off_c[:, 1]) * stride,
                wh_c[:, 0] * stride, wh_c[:, 1] * stride)
    return Candidates(boxes, scores, labels)


# --- ssd ---------------------------------------------------------------------------------------

def ssd_priors(params: dict[str, Any], input_size: tuple[int, int]) -> np.ndarray:
    """SSD prior boxes: float32 [P, 4] (cx, cy, w, h), normalised by the network input (h, w).

    Standard SSD300 order: level by level, cells row-major, and per cell: the min-size square,
    the sqrt(min*max) square, then for each aspect ratio ar the pair (s*sqrt(ar), s/sqrt(ar)) and
    its transpose. ``steps``, ``min_sizes`` and ``max_sizes`` are in input pixels; the centre of
    cell (i, j) is ((j + 0.5) * step, (i + 0.5) * step). ``clip`` clamps all four values to [0, 1].
    """
    in_h, in_w = (float(v) for v in input_size)
    try:
        feature_maps = [(int(f), int(f)) if np.ndim(f) == 0 else (int(f[0]), int(f[1])) for f in params["feature_maps"]]
        steps = [float(s) for s in params["steps"]]
        min_sizes = [float(s) for s in params["min_sizes"]]
        max_sizes = [float(s) for s in params["max_sizes"]]
        aspect_ratios = [[float(a) for a in level] for level in params["aspect_ratios"]]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SpecError(f"head kind 'ssd': params need feature_maps [[H, W], ...], steps, min_sizes, max_sizes "
                        f"and aspect_ratios (one per level); could not read them ({exc!r})") from None
    levels = len(feature_maps)
    if not all(len(v) == levels for v in (steps, min_sizes, max_sizes, aspect_ratios)):
        raise SpecError(f"head kind 'ssd': feature_maps ({levels}), steps ({len(steps)}), min_sizes "
                        f"({len(min_sizes)}), max_sizes ({len(max_sizes)}) and aspect_ratios "
                        f"({len(aspect_ratios)}) must have one entry per level")
    per_level = []
    for (fh, fw), step, s_min, s_max, ratios in zip(feature_maps, steps, min_sizes, max_sizes, aspect_ratios):
        # (w, h) of each prior at a cell, in pixels, in the standard order.
        sizes = [(s_min, s_min), (math.sqrt(s_min * s_max),) * 2]
        for ar in ratios:
            r = math.sqrt(ar)
            sizes += [(s_min * r, s_min / r), (s_min / r, s_min * r)]
        wh = np.asarray(sizes, dtype=np.float64) / (in_w, in_h)  # [n, 2]
        cx = (np.arange(fw, dtype=np.float64) + 0.5) * step / in_w
        cy = (np.arange(fh, dtype=np.float64) + 0.5) * step / in_h
        centres = np.stack(np.meshgrid(cx, cy), axis=-1).reshape(-1, 1, 2)  # [cells, 1, 2] row-major
        n = len(sizes)
        level = np.concatenate([np.broadcast_to(centres, (len(centres), n, 2)),
                                np.broadcast_to(wh, (len(centres), n, 2))], axis=-1)
        per_level.append(level.reshape(-1, 4))
    priors = np.concatenate(per_level).astype(np.float32)
    if params.get("clip", False):
        np.clip(priors, 0.0, 1.0, out=priors)
    return priors


@lru_cache(maxsize=16)
def _ssd_priors_cached(params_json: str, input_size: tuple[int, int]) -> np.ndarray:
    priors = ssd_priors(json.loads(params_json), input_size)
    priors.setflags(write=False)
    return priors


@register_decoder("ssd")
def decode_ssd(outputs: Sequence[np.ndarray], spec: ModelSpec,
               score_threshold: float | None = None) -> Candidates:
    """SSD: ``loc [B, P, 4]`` offsets and ``conf [B, P, 1+nc]`` logits (class 0 = background).

    With priors (p_cx, p_cy, p_w, p_h) and variances (v0, v1):
    cx = p_cx + loc0*v0*p_w, cy = p_cy + loc1*v0*p_h, w = p_w*exp(loc2*v1), h = p_h*exp(loc3*v1),
    scaled to input pixels. Scores: softmax over 1+nc, background dropped, best real class.
    """
    params = spec.head.params
    variances = _param(spec, "variances", [0.1, 0.2])
    if len(variances) != 2:
        raise SpecError(f"head kind 'ssd': params.variances must be [center, size], got {variances!r}")
    v0, v1 = float(variances[0]), float(variances[1])
    try:
        key = json.dumps(params, sort_keys=True)
    except TypeError:
        raise SpecError(f"head kind 'ssd': params must be JSON data, got {params!r}") from None
    priors = _ssd_priors_cached(key, tuple(spec.input_size))
    _check_count(outputs, 2, spec, "loc, conf")
    nc = spec.num_classes
    loc, conf = (_as_float32(o) for o in outputs)
    p = len(priors)
    batch = loc.shape[0] if loc.ndim else None
    _check_shape(loc, 0, spec, (None, p, 4), f"[B, {p}, 4] (loc, one row per prior)", batch)
    _check_shape(conf, 1, spec, (None, p, 1 + nc), f"[B, {p}, {1 + nc}] (conf, background + {nc} classes)", batch)
    in_h, in_w = spec.input_size
    pw = priors[:, 2] * in_w  # prior sizes and centres in pixels
    ph = priors[:, 3] * in_h
    cx = priors[:, 0] * in_w + loc[..., 0] * v0 * pw
    cy = priors[:, 1] * in_h + loc[..., 1] * v0 * ph
    w = pw * np.exp(loc[..., 2] * v1)
    h = ph * np.exp(loc[..., 3] * v1)
    boxes = np.empty((loc.shape[0], p, 4), np.float32)
    _write_xyxy(boxes, cx, cy, w, h)
    # softmax_c = exp(z_c - m) / sum_j exp(z_j - m), m = max_j z_j; only the best real class is needed.
    m = conf.max(axis=2, keepdims=True)
    denom = np.exp(conf - m).sum(axis=2)
    best, labels = _best_class(conf[..., 1:], axis=2)
    scores = np.exp(best - m[..., 0]) / denom
    return Candidates(boxes, scores.astype(np.float32, copy=False), labels.astype(np.int64, copy=False))


# --- fastestdet --------------------------------------------------------------------------------

@register_decoder("fastestdet")
def decode_fastestdet(outputs: Sequence[np.ndarray], spec: ModelSpec,
                      score_threshold: float | None = None) -> Candidates:
    """FastestDet: one ``[B, 5+nc, H, W]`` = (sigmoid objectness, 4 raw reg, softmax classes).

    cx = (tanh(reg0) + cell_x) / W * input_w, cy = (tanh(reg1) + cell_y) / H * input_h,
    w = sig(reg2) * input_w, h = sig(reg3) * input_h; score = obj^0.6 * max_c(cls_c)^0.4.
    obj and cls are probabilities already; they are clamped at 0 first because quantised
    backends can return tiny negatives, whose fractional powers would be NaN.
    """
    _check_count(outputs, 1, spec, "one [B, 5+nc, H, W] map")
    nc = spec.num_classes
    arr = _as_float32(outputs[0])
    _check_shape(arr, 0, spec, (None, 5 + nc, None, None), f"[B, {5 + nc}, H, W] (obj + 4 reg + {nc} classes)")
    b, c, h, w = arr.shape
    in_h, in_w = spec.input_size
    x = arr.reshape(b, c, h * w)
    gx, gy = _cell_xy(h, w)
    boxes = np.empty((b, h * w, 4), np.float32)
    _write_xyxy(boxes, (np.tanh(x[:, 1]) + gx) * (in_w / w), (np.tanh(x[:, 2]) + gy) * (in_h / h),
                _sigmoid(x[:, 3]) * in_w, _sigmoid(x[:, 4]) * in_h)
    best, labels = _best_class(x[:, 5:], axis=1)
    scores = np.power(np.maximum(x[:, 0], 0.0), 0.6) * np.power(np.maximum(best, 0.0), 0.4)
    return Candidates(boxes, scores.astype(np.float32, copy=False), labels.astype(np.int64, copy=False))


# --- heads decoded inside the exported graph (third-party ONNX exports) -------------------------

def _check_single_3d(outputs: Sequence[np.ndarray], spec: ModelSpec, expected: Sequence[int | None],
                     expected_text: str) -> np.ndarray:
    """The one float32 ``[B, ., .]`` output of a head decoded in the graph, shape-checked."""
    _check_count(outputs, 1, spec, f"one {expected_text} tensor")
    arr = _as_float32(outputs[0])
    _check_shape(arr, 0, spec, expected, expected_text)
    return arr


@register_decoder("ultralytics_decoded")
def decode_ultralytics_decoded(outputs: Sequence[np.ndarray], spec: ModelSpec,
                               score_threshold: float | None = None) -> Candidates:
    """Ultralytics 8.x detection export: one ``[B, 4+nc, N]`` = (cx, cy, w, h, nc class scores).

    Boxes are centre/size in network-input pixels; class scores are sigmoid outputs in [0, 1]
    (no objectness). score = max_c cls_c, label = argmax_c (first index on ties).
    """
    nc = spec.num_classes
    arr = _check_single_3d(outputs, spec, (None, 4 + nc, None), f"[B, {4 + nc}, N] (cx, cy, w, h + {nc} class scores)")
    b, _, n = arr.shape
    boxes = np.empty((b, n, 4), np.float32)
    _write_xyxy(boxes, arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])
    scores, labels = _best_class(arr[:, 4:], axis=1)  # [B, N]
    return Candidates(boxes, np.ascontiguousarray(scores, dtype=np.float32), labels.astype(np.int64, copy=False))


#: how far the class column of an ``e2e_xyxy`` output may sit from an integer (fp16 holds 0..2048 exactly)
_E2E_CLASS_TOLERANCE = 0.01


@register_decoder("e2e_xyxy")
def decode_e2e_xyxy(outputs: Sequence[np.ndarray], spec: ModelSpec,
                    score_threshold: float | None = None) -> Candidates:
    """End-to-end (NMS-free) export: one ``[B, K, 6]`` = (x1, y1, x2, y2, score, class index).

    Boxes are xyxy in network-input pixels, ``score`` the final score, ``class`` a float holding
    the class index. The rows are passed through unchanged (no NMS is needed: the spec's
    postprocess has ``nms=False``). A class value that is not an integer in 0..nc-1 means the
    output is not this layout: OutputError.
    """
    nc = spec.num_classes
    arr = _check_single_3d(outputs, spec, (None, None, 6), "[B, K, 6] (x1, y1, x2, y2, score, class)")
    cls = arr[..., 5]
    labels = np.rint(cls)
    bad = (np.abs(cls - labels) > _E2E_CLASS_TOLERANCE) | (labels < 0) | (labels > nc - 1)
    if bad.any():
        value = float(cls[bad][0])
        raise OutputError(f"head 'e2e_xyxy' output 0 ({_output_name(spec, 0)!r}): column 5 must be a class index "
                          f"in 0..{nc - 1}, got {value:g}; is this an end-to-end [B, K, 6] export with {nc} classes?")
    return Candidates(np.ascontiguousarray(arr[..., :4]), np.ascontiguousarray(arr[..., 4]),
                      labels.astype(np.int64))


@register_decoder("yolo_decoded")
def decode_yolo_decoded(outputs: Sequence[np.ndarray], spec: ModelSpec,
                        score_threshold: float | None = None) -> Candidates:
    """YOLOv5 / YOLOX (``decode_in_inference=True``) export: one ``[B, N, 5+nc]``.

    Per candidate (cx, cy, w, h in network-input pixels, objectness probability, nc class
    probabilities). score = obj * max_c cls_c (obj >= 0 is common to every class, so the best
    class of obj * cls is the best class of cls), label = argmax_c cls_c.
    """
    nc = spec.num_classes
    arr = _check_single_3d(outputs, spec, (None, None, 5 + nc),
                           f"[B, N, {5 + nc}] (cx, cy, w, h, obj + {nc} class probabilities)")
    b, n, _ = arr.shape
    boxes = np.empty((b, n, 4), np.float32)
    _write_xyxy(boxes, arr[..., 0], arr[..., 1], arr[..., 2], arr[..., 3])
    best, labels = _best_class(arr[..., 5:], axis=2)
    return Candidates(boxes, (arr[..., 4] * best).astype(np.float32, copy=False), labels.astype(np.int64, copy=False))


def _flat_level_sizes(spec: ModelSpec, strides: Sequence[float]) -> list[tuple[int, int]]:
    """(H, W) of each level's grid for a flattened multi-level head: ceil(input / stride) (stride-2 convs, pad 1)."""
    in_h, in_w = spec.input_size
    return [(math.ceil(in_h / s), math.ceil(in_w / s)) for s in strides]


@register_decoder("yolox_flat")
def decode_yolox_flat(outputs: Sequence[np.ndarray], spec: ModelSpec,
                      score_threshold: float | None = None) -> Candidates:
    """Official YOLOX ONNX export (``tools/export_onnx.py``, ``decode_in_inference`` off, its default):
    one ``[B, N, 5+nc]`` over the levels of ``params.strides``, level by level, cells row-major.

    Per candidate (4 raw box regressions, objectness *probability*, nc class *probabilities*):
    the YOLOX head applies the sigmoid to obj and cls before flattening, even in this mode; only
    the box decode is left out. xy = (reg_xy + cell) * stride, wh = exp(reg_wh) * stride,
    score = obj * max_c cls_c. N must be sum over levels of ceil(H/s) * ceil(W/s).
    """
    strides = _strides(spec)
    nc = spec.num_classes
    sizes = _flat_level_sizes(spec, strides)
    total = sum(h * w for h, w in sizes)
    arr = _check_single_3d(outputs, spec, (None, total, 5 + nc),
                           f"[B, {total}, {5 + nc}] ({total} cells over strides {[int(s) for s in strides]} of "
                           f"input {spec.input_size[0]}x{spec.input_size[1]}; 4 reg + obj + {nc} classes)")
    b = arr.shape[0]
    result = _allocate(b, total)
    start = 0
    for (h, w), stride in zip(sizes, strides):
        n = h * w
        x = arr[:, start:start + n]
        gx, gy = _cell_xy(h, w)
        _write_xyxy(result.boxes[:, start:start + n], (x[..., 0] + gx) * stride, (x[..., 1] + gy) * stride,
                    np.exp(x[..., 2]) * stride, np.exp(x[..., 3]) * stride)
        start += n
    best, labels = _best_class(arr[..., 5:], axis=2)
    np.multiply(arr[..., 4], best, out=result.scores)
    result.labels[...] = labels
    return result


# --- NMS inside the graph (edgekit.convert.graph_nms; the contract in edgekit.runtime.graph_nms) -----------

@register_decoder(GRAPH_NMS_HEAD)
def decode_nms_rows(outputs: Sequence[np.ndarray], spec: ModelSpec,
                    score_threshold: float | None = None) -> Candidates:
    """In-graph NMS output: ``[S, 8]`` rows (image index, x1, y1, x2, y2, score, class, rank) and ``[B]`` (its
    length is the batch size). Each image gets its rows in rank order (the host NMS's keep order: descending
    score, ties by candidate index), padded with score-0 rows to the longest image; the score filter
    (strict ``>``, so the padding never passes) and max-detections run on the host, NMS does not.
    """
    _check_count(outputs, 2, spec, "[S, 8] kept rows and the [B] batch marker")
    rows = _as_float32(outputs[0])
    _check_shape(rows, 0, spec, (None, ROW_COLUMNS), "[S, 8] (image, x1, y1, x2, y2, score, class, rank)")
    marker = np.asarray(outputs[1])
    if marker.ndim != 1 or marker.shape[0] < 1:
        raise OutputError(f"head 'nms_rows' output 1 ({_output_name(spec, 1)!r}): expected shape [B], got "
                          f"{tuple(marker.shape)}")
    batch = int(marker.shape[0])
    image = rows[:, 0].astype(np.int64)
    labels = rows[:, 6].astype(np.int64)
    bad = (image != rows[:, 0]) | (image < 0) | (image >= batch) | (labels != rows[:, 6]) | (labels < 0) \
        | (labels >= spec.num_classes)
    if bad.any():
        row = rows[np.flatnonzero(bad)[0]]
        raise OutputError(f"head 'nms_rows' output 0 ({_output_name(spec, 0)!r}): row with image {row[0]:g} and "
                          f"class {row[6]:g}; expected an image in 0..{batch - 1} and a class in "
                          f"0..{spec.num_classes - 1}")
    order = np.lexsort((rows[:, 7], image))  # by image, then rank
    counts = np.bincount(image, minlength=batch)
    width = int(counts.max()) if len(rows) else 0
    boxes = np.zeros((batch, width, 4), np.float32)
    scores = np.zeros((batch, width), np.float32)
    kept_labels = np.zeros((batch, width), np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sorted_rows, sorted_image = rows[order], image[order]
    slot = np.arange(len(rows)) - starts[sorted_image]  # position of each row within its image
    boxes[sorted_image, slot] = sorted_rows[:, 1:5]
    scores[sorted_image, slot] = sorted_rows[:, 5]
    kept_labels[sorted_image, slot] = labels[order]
    return Candidates(boxes, scores, kept_labels)
