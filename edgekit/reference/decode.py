"""Reference head decoders in torch: the oracle ``edgekit.runtime.decode`` is checked against.

Written for clarity, not speed, and independently of the numpy runtime (no shared code beyond
the spec and the registry class). Same head kinds, same raw output contract (see the ``edgekit.spec``
docstring), same candidate order and tie-breaking:

- grid heads (``yolox``, ``dfl``, ``fastestdet``): level by level, cells row-major;
- ``yolo_anchor``: level by level, then anchor, then cells row-major;
- ``ssd``: prior order of :func:`ssd_priors`;
- ``centernet``: top-k peaks by descending score, ties by ascending flat index class*H*W + cell.

``decode(outputs, spec)`` returns ``(boxes, scores, labels)``: float32 ``[B, N, 4]`` xyxy in
network-input pixels (not clipped), float32 ``[B, N]``, int64 ``[B, N]``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from edgekit.errors import OutputError, SpecError
from edgekit.registry import DecoratorRegistry
from edgekit.spec import ModelSpec

DecodeResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
DecoderFn = Callable[[Sequence[torch.Tensor], ModelSpec], DecodeResult]

#: head kind -> reference decoder, filled by ``@register_decoder(kind)`` below.
DECODERS: DecoratorRegistry[DecoderFn] = DecoratorRegistry("head kind", SpecError)
register_decoder = DECODERS.register
#: The reference decoder of a head kind; SpecError listing the known kinds otherwise.
get_decoder = DECODERS.lookup


def decode(outputs: Sequence[torch.Tensor], spec: ModelSpec) -> DecodeResult:
    """Decode raw outputs (in ``spec.head.output_names`` order) to (boxes, scores, labels)."""
    decoder = get_decoder(spec.head.kind)
    names = spec.head.output_names
    if len(outputs) != len(names):
        raise OutputError(f"head {spec.head.kind!r} expects {len(names)} output(s) {list(names)}, got {len(outputs)}")
    tensors = []
    for name, out in zip(names, outputs):
        t = torch.as_tensor(out).float()
        if torch.isnan(t).any() or torch.isinf(t).any():
            raise OutputError(f"model output {name!r} contains NaN or inf values (head kind {spec.head.kind!r})")
        tensors.append(t)
    return decoder(tensors, spec)


# --- helpers -----------------------------------------------------------------------------------

def _require(spec: ModelSpec, name: str):
    if spec.head.params.get(name) is None:
        raise SpecError(f"head kind {spec.head.kind!r} needs parameter {name!r} in spec.head.params")
    return spec.head.params[name]


def _expect(ok: bool, spec: ModelSpec, index: int, expected: str, got: torch.Tensor) -> None:
    if not ok:
        raise OutputError(f"head {spec.head.kind!r} output {index}: expected shape {expected}, got {tuple(got.shape)}")


def _expect_count(outputs: Sequence[torch.Tensor], n: int, spec: ModelSpec) -> None:
    if len(outputs) != n:
        raise OutputError(f"head {spec.head.kind!r} expects {n} output(s), got {len(outputs)}")


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell column (x) and row (y) index, each [H, W] float32."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return xs, ys


def _xyxy(cx: torch.Tensor, cy: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


# --- yolo_anchor -------------------------------------------------------------------------------

@register_decoder("yolo_anchor")
def decode_yolo_anchor(outputs: Sequence[torch.Tensor], spec: ModelSpec) -> DecodeResult:
    """YOLOv5: xy = (2*sig - 0.5 + grid) * stride, wh = (2*sig)^2 * anchor, score = sig(obj)*sig(cls)."""
    strides = _require(spec, "strides")
    anchors = _require(spec, "anchors")
    _expect_count(outputs, len(strides), spec)
    nc = spec.num_classes
    all_boxes, all_scores, all_labels = [], [], []
    for i, (out, stride, level_anchors) in enumerate(zip(outputs, strides, anchors)):
        anchor_wh = torch.tensor(level_anchors, dtype=torch.float32).reshape(-1, 2)  # [na, 2]
        na = anchor_wh.shape[0]
        _expect(out.dim() == 4 and out.shape[1] == na * (5 + nc), spec, i, f"[B, {na * (5 + nc)}, H, W]", out)
        b, _, h, w = out.shape
        # [B, na, 5+nc, H, W] -> [B, na, H, W, 5+nc], the YOLOv5 layout.
        p = out.reshape(b, na, 5 + nc, h, w).permute(0, 1, 3, 4, 2).sigmoid()
        xs, ys = _grid(h, w)
        cx = (p[..., 0] * 2 - 0.5 + xs) * stride
        cy = (p[..., 1] * 2 - 0.5 + ys) * stride
        bw = (p[..., 2] * 2) ** 2 * anchor_wh[:, 0].view(1, na, 1, 1)
        bh = (p[..., 3] * 2) ** 2 * anchor_wh[:, 1].view(1, na, 1, 1)
        class_scores = p[..., 4:5] * p[..., 5:]  # [B, na, H, W, nc]
        scores, labels = class_scores.max(dim=-1)
        all_boxes.append(_xyxy(cx, cy, bw, bh).reshape(b, -1, 4))
        all_scores.append(scores.reshape(b, -1))
        all_labels.append(labels.reshape(b, -1))
    return torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(all_labels, 1)


# --- yolox -------------------------------------------------------------------------------------

@register_decoder("yolox")
def decode_yolox(outputs: Sequence[torch.Tensor], spec: ModelSpec) -> DecodeResult:
    """YOLOX: xy = (reg + grid) * stride, wh = exp(reg) * stride, score = sig(obj) * sig(cls)."""
    strides = _require(spec, "strides")
    _expect_count(outputs, len(strides), spec)
    nc = spec.num_classes
    all_boxes, all_scores, all_labels = [], [], []
    for i, (out, stride) in enumerate(zip(outputs, strides)):
        _expect(out.dim() == 4 and out.shape[1] == 5 + nc, spec, i, f"[B, {5 + nc}, H, W]", out)
        p = out.flatten(2).transpose(1, 2)  # [B, H*W, 5+nc], cells row-major
        xs, ys = _grid(out.shape[2], out.shape[3])
        cx = (p[..., 0] + xs.flatten()) * stride
        cy = (p[..., 1] + ys.flatten()) * stride
        bw = torch.exp(p[..., 2]) * stride
        bh = torch.exp(p[..., 3]) * stride
        scores, labels = (p[..., 4:5].sigmoid() * p[..., 5:].sigmoid()).max(dim=-1)
        all_boxes.append(_xyxy(cx, cy, bw, bh))
        all_scores.append(scores)
        all_labels.append(labels)
    return torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(all_labels, 1)


# --- dfl ---------------------------------------------------------------------------------------

@register_decoder("dfl")
def decode_dfl(outputs: Sequence[torch.Tensor], spec: ModelSpec) -> DecodeResult:
    """DFL: ltrb = sum_i softmax(bins)_i * i * stride from anchor (grid + 0.5) * stride (reg_max 1: ltrb = raw
    channels * stride); score = sig(cls)."""
    strides = _require(spec, "strides")
    reg_max = int(_require(spec, "reg_max"))
    _expect_count(outputs, len(strides), spec)
    nc = spec.num_classes
    all_boxes, all_scores, all_labels, all_class_scores = [], [], [], []
    for i, (out, stride) in enumerate(zip(outputs, strides)):
        _expect(out.dim() == 4 and out.shape[1] == 4 * reg_max + nc, spec, i, f"[B, {4 * reg_max + nc}, H, W]", out)
        b, _, h, w = out.shape
        if reg_max == 1:  # raw ltrb distances in stride units (YOLO26)
            ltrb = out[:, :4].reshape(b, 4, h * w) * stride
        else:
            bins = out[:, :4 * reg_max].reshape(b, 4, reg_max, h * w)
            probs = F.softmax(bins, dim=2)
            project = torch.arange(reg_max, dtype=torch.float32).view(1, 1, reg_max, 1)
            ltrb = (probs * project).sum(dim=2) * stride  # [B, 4, H*W]
        xs, ys = _grid(h, w)
        ax = (xs.flatten() + 0.5) * stride
        ay = (ys.flatten() + 0.5) * stride
        boxes = torch.stack([ax - ltrb[:, 0], ay - ltrb[:, 1], ax + ltrb[:, 2], ay + ltrb[:, 3]], dim=-1)
        class_scores = out[:, 4 * reg_max:].flatten(2).sigmoid()  # [B, nc, H*W]
        scores, labels = class_scores.max(dim=1)
        all_boxes.append(boxes)
        all_scores.append(scores)
        all_labels.append(labels)
        all_class_scores.append(class_scores)
    one2one_topk = spec.head.params.get("one2one_topk")
    if one2one_topk is not None:
        return _one_to_one(torch.cat(all_boxes, 1), torch.cat(all_class_scores, 2).transpose(1, 2), int(one2one_topk))
    return torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(all_labels, 1)


def _one_to_one(boxes: torch.Tensor, class_scores: torch.Tensor, k: int) -> DecodeResult:
    """End-to-end (one-to-one head) selection: the k anchors with the best max-class score, then the k best
    (anchor, class) pairs among them, anchor-major; both by a stable descending sort (ties to the lower index)."""
    n, nc = class_scores.shape[1:]
    picked_boxes, picked_scores, picked_labels = [], [], []
    for image_boxes, image_scores in zip(boxes, class_scores):
        anchors = torch.sort(image_scores.max(dim=1).values, descending=True, stable=True).indices[:min(k, n)]
        pairs = image_scores[anchors].flatten()
        order = torch.sort(pairs, descending=True, stable=True).indices[:min(k, len(pairs))]
        picked_boxes.append(image_boxes[anchors[order // nc]])
        picked_scores.append(pairs[order])
        picked_labels.append(order % nc)
    return torch.stack(picked_boxes), torch.stack(picked_scores), torch.stack(picked_labels)


# --- centernet ---------------------------------------------------------------------------------

@register_decoder("centernet")
def decode_centernet(outputs: Sequence[torch.Tensor], spec: ModelSpec) -> DecodeResult:
    """CenterNet: peaks of sig(heatmap) by 3x3 max-pool, top-k, box = (cell + offset) +- wh/2, times stride."""
    stride = float(_require(spec, "stride"))
    topk = int(spec.head.params.get("topk") or 100)
    _expect_count(outputs, 3, spec)
    nc = spec.num_classes
    heatmap, wh, offset = outputs
    _expect(heatmap.dim() == 4 and heatmap.shape[1] == nc, spec, 0, f"[B, {nc}, H, W]", heatmap)
    b, _, h, w = heatmap.shape
    _expect(tuple(wh.shape) == (b, 2, h, w), spec, 1, f"[{b}, 2, {h}, {w}]", wh)
    _expect(tuple(offset.shape) == (b, 2, h, w), spec, 2, f"[{b}, 2, {h}, {w}]", offset)
    heat = heatmap.sigmoid()
    peaks = F.max_pool2d(heat, kernel_size=3, stride=1, padding=1)
    heat = heat * (heat == peaks).float()
    # A stable descending sort keeps equal scores in index order: deterministic ties.
    flat = heat.reshape(b, -1)
    scores, index = torch.sort(flat, dim=1, descending=True, stable=True)
    scores, index = scores[:, :topk], index[:, :topk]
    labels = index // (h * w)
    cell = index % (h * w)
    cell_x = (cell % w).float()
    cell_y = (cell // w).float()
    wh_flat = wh.reshape(b, 2, h * w)
    off_flat = offset.reshape(b, 2, h * w)
    box_w = torch.gather(wh_flat[:, 0], 1, cell)
    box_h = torch.gather(wh_flat[:, 1], 1, cell)
    cx = cell_x + torch.gather(off_flat[:, 0], 1, cell)
    cy = cell_y + torch.gather(off_flat[:, 1], 1, cell)
    boxes = _xyxy(cx, cy, box_w, box_h) * stride
    return boxes, scores, labels


# --- ssd ---------------------------------------------------------------------------------------

def ssd_priors(params: dict, input_size: tuple[int, int]) -> torch.Tensor:
    """SSD priors [P, 4] (cx, cy, w, h) normalised by the input (h, w), written as the classic SSD300 loops."""
    in_h, in_w = input_size
    priors = []
    for k, fmap in enumerate(params["feature_maps"]):
        fh, fw = (fmap, fmap) if isinstance(fmap, int) else fmap
        step = params["steps"][k]
        s_min = params["min_sizes"][k]
        s_max = params["max_sizes"][k]
        for i, j in itertools.product(range(fh), range(fw)):
            cx = (j + 0.5) * step / in_w
            cy = (i + 0.5) * step / in_h
            priors.append([cx, cy, s_min / in_w, s_min / in_h])
            s_prime = math.sqrt(s_min * s_max)
            priors.append([cx, cy, s_prime / in_w, s_prime / in_h])
            for ar in params["aspect_ratios"][k]:
                priors.append([cx, cy, s_min * math.sqrt(ar) / in_w, s_min / math.sqrt(ar) / in_h])
                priors.append([cx, cy, s_min / math.sqrt(ar) / in_w, s_min * math.sqrt(ar) / in_h])
    out = torch.tensor(priors, dtype=torch.float64)
    if params.get("clip", False):
        out = out.clamp(0.0, 1.0)
    return out.float()


@register_decoder("ssd")
def decode_ssd(outputs: Sequence[torch.Tensor], spec: ModelSpec) -> DecodeResult:
    """SSD: centre/size offsets against priors with variances; softmax over 1+nc, background dropped."""
    priors = ssd_priors(spec.head.params, spec.input_size)
    v_center, v_size = spec.head.params.get("variances") or (0.1, 0.2)
    _expect_count(outputs, 2, spec)
    loc, conf = outputs
    nc = spec.num_classes
    p = priors.shape[0]
    _expect(loc.dim() == 3 and tuple(loc.shape[1:]) == (p, 4), spec, 0, f"[B, {p}, 4]", loc)
    _expect(conf.dim() == 3 and tuple(conf.shape[1:]) == (p, 1 + nc), spec, 1, f"[B, {p}, {1 + nc}]", conf)
    in_h, in_w = spec.input_size
    cx = priors[:, 0] + loc[..., 0] * v_center * priors[:, 2]
    cy = priors[:, 1] + loc[..., 1] * v_center * priors[:, 3]
    w = priors[:, 2] * torch.exp(loc[..., 2] * v_size)
    h = priors[:, 3] * torch.exp(loc[..., 3] * v_size)
    boxes = _xyxy(cx * in_w, cy * in_h, w * in_w, h * in_h)
    probs = F.softmax(conf, dim=-1)[..., 1:]  # drop background
    scores, labels = probs.max(dim=-1)
    return boxes, scores, labels


# --- fastestdet --------------------------------------------------------------------------------

@register_decoder("fastestdet")
def decode_fastestdet(outputs: Sequence[torch.Tensor], spec: ModelSpec) -> DecodeResult:
    """FastestDet: centre = (tanh(reg) + cell) / grid, size = sig(reg), times the input size;
    score = obj^0.6 * max(cls)^0.4 (obj, cls clamped at 0)."""
    _expect_count(outputs, 1, spec)
    out = outputs[0]
    nc = spec.num_classes
    _expect(out.dim() == 4 and out.shape[1] == 5 + nc, spec, 0, f"[B, {5 + nc}, H, W]", out)
    b, _, h, w = out.shape
    in_h, in_w = spec.input_size
    p = out.flatten(2).transpose(1, 2)  # [B, H*W, 5+nc]
    xs, ys = _grid(h, w)
    cx = (torch.tanh(p[..., 1]) + xs.flatten()) / w * in_w
    cy = (torch.tanh(p[..., 2]) + ys.flatten()) / h * in_h
    bw = torch.sigmoid(p[..., 3]) * in_w
    bh = torch.sigmoid(p[..., 4]) * in_h
    cls_score, labels = p[..., 5:].max(dim=-1)
    scores = p[..., 0].clamp(min=0) ** 0.6 * cls_score.clamp(min=0) ** 0.4
    return _xyxy(cx, cy, bw, bh), scores, labels


# --- heads decoded inside the exported graph (third-party ONNX exports) -------------------------

def _single(outputs: Sequence[torch.Tensor], spec: ModelSpec, ok, expected: str) -> torch.Tensor:
    _expect_count(outputs, 1, spec)
    out = outputs[0]
    _expect(out.dim() == 3 and ok(out.shape), spec, 0, expected, out)
    return out


@register_decoder("ultralytics_decoded")
def decode_ultralytics_decoded(outputs: Sequence[torch.Tensor], spec: ModelSpec) -> DecodeResult:
    """Ultralytics [B, 4+nc, N]: (cx, cy, w, h, class scores); score = max class score."""
    nc = spec.num_classes
    out = _single(outputs, spec, lambda s: s[1] == 4 + nc, f"[B, {4 + nc}, N]")
    p = out.transpose(1, 2)  # [B, N, 4+nc]
    scores, labels = p[..., 4:].max(dim=-1)
    return _xyxy(p[..., 0], p[..., 1], p[..., 2], p[..., 3]), scores, labels


@register_decoder("e2e_xyxy")
def decode_e2e_xyxy(outputs: Sequence[torch.Tensor], spec: ModelSpec) -> DecodeResult:
    """End-to-end [B, K, 6]: (x1, y1, x2, y2, score, class index as a float), passed through."""
    nc = spec.num_classes
    out = _single(outputs, spec, lambda s: s[2] == 6, "[B, K, 6]")
    labels = out[..., 5].round()
    if ((out[..., 5] - labels).abs() > 0.01).any() or (labels < 0).any() or (labels >= nc).any():
        raise OutputError(f"head 'e2e_xyxy' output 0: column 5 must be a class index in 0..{nc - 1}")
    return out[..., :4].clone(), out[..., 4].clone(), labels.long()


@register_decoder("yolo_decoded")
def decode_yolo_decoded(outputs: Sequence[torch.Tensor], spec: ModelSpec) -> DecodeResult:
    """[B, N, 5+nc]: (cx, cy, w, h, obj prob, class probs); score = max over classes of obj * cls."""
    nc = spec.num_classes
    p = _single(outputs, spec, lambda s: s[2] == 5 + nc, f"[B, N, {5 + nc}]")
    scores, labels = (p[..., 4:5] * p[..., 5:]).max(dim=-1)
    return _xyxy(p[..., 0], p[..., 1], p[..., 2], p[..., 3]), scores, labels


@register_decoder("yolox_flat")
def decode_yolox_flat(outputs: Sequence[torch.Tensor], spec: ModelSpec) -> DecodeResult:
    """Official YOLOX export [B, N, 5+nc] over strides, level by level, cells row-major:
    (raw reg, obj prob, class probs); xy = (reg + grid) * s, wh = exp(reg) * s, score = obj * cls."""
    strides = _require(spec, "strides")
    nc = spec.num_classes
    in_h, in_w = spec.input_size
    grids = [(-(-in_h // s), -(-in_w // s)) for s in strides]  # ceil division
    total = sum(h * w for h, w in grids)
    p = _single(outputs, spec, lambda s: s[1] == total and s[2] == 5 + nc, f"[B, {total}, {5 + nc}]")
    # per-candidate cell coordinates and stride, concatenated level by level
    cell_x, cell_y, stride_of = [], [], []
    for (h, w), s in zip(grids, strides):
        xs, ys = _grid(h, w)
        cell_x.append(xs.flatten())
        cell_y.append(ys.flatten())
        stride_of.append(torch.full((h * w,), float(s)))
    cx_cell, cy_cell, st = torch.cat(cell_x), torch.cat(cell_y), torch.cat(stride_of)
    cx = (p[..., 0] + cx_cell) * st
    cy = (p[..., 1] + cy_cell) * st
    bw = torch.exp(p[..., 2]) * st
    bh = torch.exp(p[..., 3]) * st
    scores, labels = (p[..., 4:5] * p[..., 5:]).max(dim=-1)
    return _xyxy(cx, cy, bw, bh), scores, labels


# --- NMS inside the graph ---------------------------------------------------------------------------------

@register_decoder("nms_rows")
def decode_nms_rows(outputs: Sequence[torch.Tensor], spec: ModelSpec) -> DecodeResult:
    """Rows (image, x1, y1, x2, y2, score, class, rank) of an in-graph NMS -> per image, in rank order, padded
    with score-0 rows to the longest image (written per image with a Python loop: the oracle)."""
    _expect_count(outputs, 2, spec)
    rows, marker = outputs
    _expect(rows.dim() == 2 and rows.shape[1] == 8, spec, 0, "[S, 8]", rows)
    _expect(marker.dim() == 1 and marker.shape[0] >= 1, spec, 1, "[B]", marker)
    batch = int(marker.shape[0])
    per_image = []
    for index in range(batch):
        mine = rows[rows[:, 0] == index]
        for value in mine[:, 6].tolist():
            if value != int(value) or not 0 <= value < spec.num_classes:
                raise OutputError(f"head 'nms_rows' output 0: class {value:g} is not in 0..{spec.num_classes - 1}")
        per_image.append(mine[torch.argsort(mine[:, 7], stable=True)])
    if sum(len(mine) for mine in per_image) != len(rows):
        raise OutputError(f"head 'nms_rows' output 0: a row's image index is not in 0..{batch - 1}")
    width = max(len(mine) for mine in per_image)
    boxes = torch.zeros((batch, width, 4), dtype=torch.float32)
    scores = torch.zeros((batch, width), dtype=torch.float32)
    labels = torch.zeros((batch, width), dtype=torch.int64)
    for index, mine in enumerate(per_image):
        boxes[index, :len(mine)] = mine[:, 1:5]
        scores[index, :len(mine)] = mine[:, 5]
        labels[index, :len(mine)] = mine[:, 6].long()
    return boxes, scores, labels
