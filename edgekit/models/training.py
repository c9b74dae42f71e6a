"""Training helpers for the built-in fixture detectors (torch, CPU, small data).

What is here, and why it is shaped this way:

- **Data** (:class:`TrainingSet`): images of a :class:`~edgekit.validate.datasets.Dataset` held in
  memory as uint8 RGB, augmented in the original image's pixels (HSV jitter, random scale and
  translation, horizontal flip), then resized with the *runtime's own* ``letterbox`` /
  ``plain_resize`` and normalised with its ``to_tensor``: training and deployment preprocess
  identically, so nothing drifts between the two. Ground truth travels as :class:`Targets`
  (xyxy boxes in network-input pixels, padded per batch).
- **Losses** (:func:`make_loss`): one target assigner + loss per head kind of ``edgekit.spec``:

  ========== ====================================================================================
  kind       assignment and loss
  ========== ====================================================================================
  yolo_anchor YOLOv5: anchors whose w/h ratio to the box is < 4, in the box centre's cell plus the
             two nearest neighbour cells; CIoU box loss, BCE objectness (target = CIoU), BCE class.
  yolox      SimOTA: candidates in the box or within 2.5 strides of its centre, cost =
             class BCE + 3 * -log IoU, dynamic k = sum of the 10 best IoUs; GIoU loss, BCE
             objectness, BCE class with target IoU. Option ``assigner="task_aligned"``: the
             dfl head's assigner on sig(cls) * sig(obj) instead of SimOTA.
  dfl        Task-aligned assigner (YOLOv8 / v6): metric = score^0.5 * IoU^6 over anchor points
             in the box (or within one stride of its centre), top 10 per box; BCE class with the
             normalised metric as soft target, CIoU box loss and distribution focal loss (DFL).
  centernet  Gaussian heat map (CornerNet radius at IoU 0.7), penalty-reduced focal loss; L1 on
             size and sub-cell offset at the centre cell (option: GIoU of the box it decodes to).
  ssd        Priors matched by IoU >= 0.5 plus the best prior of every box; smooth-L1 on the
             variance-encoded offsets; softmax cross-entropy with 3:1 hard negative mining.
  ========== ====================================================================================

- **Loop** (:func:`train`): AdamW, linear warm-up then cosine decay, gradient clipping, an
  exponential moving average (EMA) of the weights (which is what gets evaluated and saved),
  seeded (``torch.manual_seed`` + a numpy ``Generator``), ``torch.set_num_threads`` configurable,
  a tqdm bar per epoch showing the loss parts.
- **Scoring** (:func:`evaluate`): the torch model through the reference decoder + NMS
  (:class:`~edgekit.reference.detector.ReferenceDetector`), then COCO mAP with pycocotools.

Boxes are xyxy float32 everywhere; "input pixels" means network-input pixel-edge coordinates
(see ``edgekit.runtime.preprocess``).
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekit.errors import InputError, SpecError
from edgekit.runtime.decode import ssd_priors
from edgekit.runtime.preprocess import load_image, resize_to_input, to_tensor
from edgekit.spec import ModelSpec, PostprocessSpec

__all__ = [
    "AugmentConfig",
    "Batch",
    "DetectionLoss",
    "LossResult",
    "Targets",
    "TrainConfig",
    "TrainResult",
    "TrainingSet",
    "aligned_iou",
    "box_iou",
    "detect_images",
    "evaluate",
    "make_loss",
    "seed_everything",
    "train",
]


# ==============================================================================================
# Box geometry
# ==============================================================================================

_EPS = 1e-7


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes: ``a [..., N, 4]``, ``b [..., M, 4]`` -> ``[..., N, M]``.

    Degenerate (zero-area) boxes give IoU 0, never NaN.
    """
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter + _EPS)


def aligned_iou(a: Tensor, b: Tensor, kind: str = "iou") -> Tensor:
    """IoU of corresponding xyxy boxes ``a [..., 4]`` and ``b [..., 4]`` -> ``[...]``.

    ``kind``:
      - ``iou``;
      - ``giou`` = IoU - (C - U) / C, C the area of the smallest enclosing box, U the union;
      - ``ciou`` = IoU - rho^2 / c^2 - alpha * v, rho the centre distance, c the enclosing box
        diagonal, v = 4 / pi^2 * (atan(w_b / h_b) - atan(w_a / h_a))^2 the aspect-ratio
        mismatch and alpha = v / (1 - IoU + v) (treated as a constant, as in the CIoU paper).
    """
    aw, ah = (a[..., 2] - a[..., 0]).clamp(min=0), (a[..., 3] - a[..., 1]).clamp(min=0)
    bw, bh = (b[..., 2] - b[..., 0]).clamp(min=0), (b[..., 3] - b[..., 1]).clamp(min=0)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    union = aw * ah + bw * bh - inter + _EPS
    iou = inter / union
    if kind == "iou":
        return iou
    cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    if kind == "giou":
        enclosing = cw * ch + _EPS
        return iou - (enclosing - union) / enclosing
    if kind == "ciou":
        diagonal2 = cw ** 2 + ch ** 2 + _EPS
        rho2 = ((a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2]) ** 2
                + (a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]) ** 2) / 4
        v = (4 / math.pi ** 2) * (torch.atan(bw / (bh + _EPS)) - torch.atan(aw / (ah + _EPS))) ** 2
        with torch.no_grad():
            alpha = v / (v - iou + (1 + _EPS))
        return iou - (rho2 / diagonal2 + v * alpha)
    raise ValueError(f"aligned_iou: kind must be 'iou', 'giou' or 'ciou', got {kind!r}")


def _xyxy_from_centre(cx: Tensor, cy: Tensor, w: Tensor, h: Tensor) -> Tensor:
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


# ==============================================================================================
# Ground truth of a batch
# ==============================================================================================

@dataclass(frozen=True)
class Targets:
    """Ground truth of a batch, padded to the largest number of boxes in one image.

    boxes: float32 ``[B, G, 4]`` xyxy in network-input pixels (zeros where padded).
    labels: int64 ``[B, G]`` class index 0..nc-1, ``-1`` where padded. ``G >= 1`` always.
    """

    boxes: Tensor
    labels: Tensor

    @property
    def valid(self) -> Tensor:
        """bool ``[B, G]``: True for real boxes, False for padding."""
        return self.labels >= 0

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def from_lists(cls, boxes: Sequence[np.ndarray | Tensor], labels: Sequence[np.ndarray | Tensor]) -> Targets:
        """Pad per-image ``boxes [n_i, 4]`` / ``labels [n_i]`` into one ``Targets``."""
        if len(boxes) != len(labels):
            raise InputError(f"targets: {len(boxes)} box arrays but {len(labels)} label arrays; expected one each per image")
        count = max([len(b) for b in boxes] + [1])
        out_boxes = torch.zeros((len(boxes), count, 4), dtype=torch.float32)
        out_labels = torch.full((len(boxes), count), -1, dtype=torch.int64)
        for i, (b, lab) in enumerate(zip(boxes, labels)):
            b = torch.as_tensor(np.asarray(b, dtype=np.float32)).reshape(-1, 4)
            lab = torch.as_tensor(np.asarray(lab, dtype=np.int64)).reshape(-1)
            if len(b) != len(lab):
                raise InputError(f"targets: image {i} has {len(b)} boxes but {len(lab)} labels")
            out_boxes[i, :len(b)] = b
            out_labels[i, :len(b)] = lab
        return cls(out_boxes, out_labels)


# ==============================================================================================
# Data: in-memory images, augmentation, runtime preprocessing
# ==============================================================================================

@dataclass(frozen=True)
class AugmentConfig:
    """Per-sample augmentation, applied in original-image pixels before the runtime resize.

    hsv_gains: (hue, saturation, value) maximum relative change; hue is a fraction of the colour
        circle. ``scale_range``: random zoom factor (log-uniform) about the image centre.
    translate: maximum shift as a fraction of the image side. flip_prob: horizontal flip.
    A box cut by the image border is kept (clipped) only if at least ``min_visible`` of its area
    and ``min_box_size`` pixels of width and height remain.
    """

    flip_prob: float = 0.5
    hsv_gains: tuple[float, float, float] = (0.015, 0.5, 0.3)
    scale_range: tuple[float, float] = (0.75, 1.33)
    translate: float = 0.1
    min_visible: float = 0.4
    min_box_size: float = 2.0


NO_AUGMENT = AugmentConfig(flip_prob=0.0, hsv_gains=(0.0, 0.0, 0.0), scale_range=(1.0, 1.0), translate=0.0)


def _hsv_jitter(image: np.ndarray, gains: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Multiply hue, saturation and value by random factors in 1 +- gain (YOLOv5's augment_hsv).

    OpenCV's 8-bit HSV stores hue in 0..179, so the hue factor wraps modulo 180.
    """
    if not any(gains):
        return image
    factor = 1.0 + rng.uniform(-1.0, 1.0, 3) * np.asarray(gains)
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_hue = ((x * factor[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * factor[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * factor[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _scale_translate(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, aug: AugmentConfig,
                     pad_value: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zoom by s about the centre and shift by (tx, ty); same output size; boxes follow.

    In pixel-edge coordinates the map is ``x' = s * x + (1 - s) * w / 2 + tx``. OpenCV's
    ``warpAffine`` works in pixel-centre coordinates (x_c = x - 0.5), where the same map has
    offset ``(1 - s) * w / 2 + tx + 0.5 * (s - 1)``; using the edge offset directly would shift
    the image half a pixel * (s - 1) against its boxes, which matters for 6 px objects.
    """
    low, high = aug.scale_range
    if low == high == 1.0 and aug.translate == 0.0:
        return image, boxes, labels
    height, width = image.shape[:2]
    s = math.exp(rng.uniform(math.log(low), math.log(high)))
    tx, ty = rng.uniform(-aug.translate, aug.translate, 2) * (width, height)
    offset_x = (1 - s) * width / 2 + tx
    offset_y = (1 - s) * height / 2 + ty
    matrix = np.array([[s, 0.0, offset_x + 0.5 * (s - 1)], [0.0, s, offset_y + 0.5 * (s - 1)]])
    warped = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(pad_value,) * 3)
    if len(boxes) == 0:
        return warped, boxes, labels
    moved = boxes * s + np.array([offset_x, offset_y, offset_x, offset_y], dtype=np.float32)
    clipped = moved.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
    cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (cw * ch >= aug.min_visible * area) & (cw >= aug.min_box_size) & (ch >= aug.min_box_size)
    return warped, clipped[keep].astype(np.float32), labels[keep]


def augment_sample(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, aug: AugmentConfig,
                   pad_value: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HSV jitter, scale/translate, horizontal flip of one HxWx3 uint8 RGB image and its boxes.

    boxes: float32 [N, 4] xyxy original pixels; labels int64 [N]. Returns the same three,
    transformed (boxes may be dropped when pushed out of the frame).
    """
    image = _hsv_jitter(image, aug.hsv_gains, rng)
    image, boxes, labels = _scale_translate(image, boxes, labels, aug, pad_value, rng)
    if aug.flip_prob > 0 and rng.uniform() < aug.flip_prob:
        width = image.shape[1]
        image = np.ascontiguousarray(image[:, ::-1])
        boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1) \
            if len(boxes) else boxes
    return image, boxes.astype(np.float32), labels


@dataclass(frozen=True)
class Batch:
    """images: float32 ``[B, 3, H, W]`` network input; targets in input pixels; indices into the set."""

    images: Tensor
    targets: Targets
    indices: np.ndarray


class TrainingSet:
    """A dataset's images in memory (uint8 RGB) with their boxes, batched for one model spec.

    ``dataset`` is an :class:`edgekit.validate.datasets.Dataset` (anything with ``.items`` and
    ``.image_path(item)`` whose items carry ``boxes`` float32 [N, 4] xyxy pixels and ``labels``).
    ``max_images`` keeps the first N images (datasets are in a stable order).
    """

    def __init__(self, dataset: Any, spec: ModelSpec, max_images: int | None = None) -> None:
        items = list(dataset.items)[:max_images] if max_images else list(dataset.items)
        if not items:
            raise InputError("training set is empty; expected at least one image")
        bad = [int(lab) for item in items for lab in np.asarray(item.labels).reshape(-1)
               if not 0 <= int(lab) < spec.num_classes]
        if bad:
            raise SpecError(f"dataset has class index {bad[0]} but the model has {spec.num_classes} classes")
        self.spec = spec
        self.items = items
        self.images = [load_image(dataset.image_path(item)) for item in items]
        self.boxes = [np.asarray(item.boxes, dtype=np.float32).reshape(-1, 4) for item in items]
        self.labels = [np.asarray(item.labels, dtype=np.int64).reshape(-1) for item in items]

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, index: int, rng: np.random.Generator | None,
               aug: AugmentConfig | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``index`` resized to the network input: (HxWx3 uint8, boxes [N, 4] input px, labels [N])."""
        image, boxes, labels = self.images[index], self.boxes[index], self.labels[index]
        pad_value = int(self.spec.resize.pad_value)
        if aug is not None and rng is not None:
            image, boxes, labels = augment_sample(image, boxes, labels, aug, pad_value, rng)
        resized, t = resize_to_input(image, self.spec)
        # Forward map of edgekit.runtime.preprocess: x_net = x_orig * scale_x + pad_x.
        scale = np.array([t.scale_x, t.scale_y, t.scale_x, t.scale_y], dtype=np.float64)
        shift = np.array([t.pad_x, t.pad_y, t.pad_x, t.pad_y], dtype=np.float64)
        return resized, (boxes * scale + shift).astype(np.float32), labels

    def batches(self, batch_size: int, rng: np.random.Generator | None = None,
                aug: AugmentConfig | None = None, shuffle: bool = True) -> Iterator[Batch]:
        """One epoch of batches (the last may be smaller); shuffled and augmented when ``rng`` is given."""
        order = rng.permutation(len(self)) if (shuffle and rng is not None) else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            samples = [self.sample(int(i), rng, aug) for i in indices]
            tensor = to_tensor([s[0] for s in samples], self.spec)
            yield Batch(torch.from_numpy(tensor), Targets.from_lists([s[1] for s in samples], [s[2] for s in samples]),
                        indices)


# ==============================================================================================
# Losses
# ==============================================================================================

@dataclass(frozen=True)
class LossResult:
    """total: scalar tensor to back-propagate; parts: the weighted components, as floats."""

    total: Tensor
    parts: dict[str, float]


def _value(loss: Tensor) -> float:
    """A loss component as a plain float for logging (detached: no autograd warning)."""
    return float(loss.detach())


class DetectionLoss:
    """Base of the per-head-kind losses: ``loss(outputs, targets) -> LossResult``.

    ``outputs`` are the raw head tensors in ``spec.head.output_names`` order (the
    ``edgekit.spec`` contract), ``targets`` the batch's :class:`Targets` in input pixels.
    """

    kind = ""

    def __init__(self, spec: ModelSpec) -> None:
        if spec.head.kind != self.kind:
            raise SpecError(f"{type(self).__name__} is for head kind {self.kind!r}, got {spec.head.kind!r}")
        self.spec = spec
        self.num_classes = spec.num_classes

    def __call__(self, outputs: Sequence[Tensor], targets: Targets) -> LossResult:
        raise NotImplementedError

    def _check_outputs(self, outputs: Sequence[Tensor], count: int) -> None:
        if len(outputs) != count:
            raise SpecError(f"head {self.kind!r}: the model returned {len(outputs)} output(s), expected {count}")


LOSSES: dict[str, type[DetectionLoss]] = {}


def _register(cls: type[DetectionLoss]) -> type[DetectionLoss]:
    LOSSES[cls.kind] = cls
    return cls


def make_loss(spec: ModelSpec, **options: Any) -> DetectionLoss:
    """The loss for ``spec.head.kind`` (options are that loss's keyword arguments)."""
    if spec.head.kind not in LOSSES:
        raise SpecError(f"no training loss for head kind {spec.head.kind!r}; "
                        f"trainable kinds: {', '.join(sorted(LOSSES))}")
    loss_class = LOSSES[spec.head.kind]
    accepted = set(inspect.signature(loss_class.__init__).parameters) - {"self", "spec"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise SpecError(f"{loss_class.__name__} has no option {unknown[0]!r}; options: {', '.join(sorted(accepted))}")
    return loss_class(spec, **options)


def _strides(spec: ModelSpec) -> list[float]:
    strides = spec.head.params.get("strides")
    if not strides:
        raise SpecError(f"head kind {spec.head.kind!r} needs params.strides")
    return [float(s) for s in strides]


def _grid_points(outputs: Sequence[Tensor], strides: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Cells of every level, level by level, row-major: (cell xy [A, 2] (column, row), stride [A])."""
    cells, stride_list = [], []
    for out, stride in zip(outputs, strides):
        h, w = out.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        cells.append(torch.stack([xs.flatten(), ys.flatten()], dim=1))
        stride_list.append(torch.full((h * w,), float(stride)))
    return torch.cat(cells), torch.cat(stride_list)


def _flatten_levels(outputs: Sequence[Tensor]) -> Tensor:
    """``[B, C, H_l, W_l]`` per level -> ``[B, A, C]``, levels concatenated, cells row-major."""
    return torch.cat([o.flatten(2).transpose(1, 2) for o in outputs], dim=1)


# --- yolo_anchor (YOLOv5) ----------------------------------------------------------------------

@dataclass(frozen=True)
class AnchorMatches:
    """YOLOv5 positives of one pyramid level (n matches).

    image, anchor, cell_y, cell_x: int64 [n] index of the prediction;
    box: float32 [n, 4] target (cx - cell_x, cy - cell_y, w, h) in grid units;
    anchor_wh: float32 [n, 2] the matched anchor in grid units; label: int64 [n].
    """

    image: Tensor
    anchor: Tensor
    cell_y: Tensor
    cell_x: Tensor
    box: Tensor
    anchor_wh: Tensor
    label: Tensor


@_register
class YoloAnchorLoss(DetectionLoss):
    """YOLOv5 loss.

    Assignment, per level with anchors a (grid units) and a box of size g (grid units): the
    anchor matches when max(g / a, a / g) < ``anchor_ratio`` (4) on both sides. A match is
    predicted in the cell holding the box centre and, because ``xy = 2 * sig - 0.5`` reaches
    [-0.5, 1.5], also in the neighbour cells on the sides the centre is nearest to (one in x,
    one in y): three cells per match.

    Loss = box_gain * mean(1 - CIoU) + obj_gain * sum_l balance_l * BCE(obj_l, CIoU target)
    + cls_gain * BCE(cls, one-hot), with YOLOv5's gains scaled for the number of levels,
    classes and the input size (obj by (size / 640)^2: fewer cells, fewer negatives).
    """

    kind = "yolo_anchor"

    def __init__(self, spec: ModelSpec, box_gain: float = 0.05, obj_gain: float = 1.0, cls_gain: float = 0.5,
                 anchor_ratio: float = 4.0) -> None:
        super().__init__(spec)
        self.strides = _strides(spec)
        anchors = spec.head.params.get("anchors")
        if not anchors or len(anchors) != len(self.strides):
            raise SpecError("head kind 'yolo_anchor' needs params.anchors, one list of [w, h] per stride")
        self.anchors = [torch.tensor(level, dtype=torch.float32).reshape(-1, 2) for level in anchors]  # pixels
        levels = len(self.strides)
        self.balance = [4.0, 1.0, 0.4] if levels == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][:levels]
        scale = 3.0 / levels
        self.box_gain = box_gain * scale
        self.cls_gain = cls_gain * self.num_classes / 80.0 * scale
        self.obj_gain = obj_gain * (max(spec.input_size) / 640.0) ** 2 * scale
        self.anchor_ratio = anchor_ratio

    def assign(self, grid_sizes: Sequence[tuple[int, int]], targets: Targets) -> list[AnchorMatches]:
        """YOLOv5 ``build_targets``: the positives of every level (``grid_sizes`` = [(H, W)] per level)."""
        valid = targets.valid
        image_index = valid.nonzero(as_tuple=True)[0]
        boxes = targets.boxes[valid]  # [M, 4] xyxy px
        labels = targets.labels[valid]
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        size = boxes[:, 2:] - boxes[:, :2]
        # Which neighbour each candidate offset points to (YOLOv5's `off` with g = 0.5).
        offsets = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * 0.5
        matches = []
        for (h, w), stride, anchors_px in zip(grid_sizes, self.strides, self.anchors):
            anchors = anchors_px / stride
            gxy, gwh = centre / stride, size / stride
            ratio = gwh[None] / anchors[:, None]  # [na, M, 2]
            fits = torch.maximum(ratio, 1 / ratio.clamp(min=_EPS)).amax(-1) < self.anchor_ratio
            anchor_idx, target_idx = fits.nonzero(as_tuple=True)
            gxy_t = gxy[target_idx]
            gxy_inv = torch.tensor([w, h], dtype=torch.float32) - gxy_t
            # Centre in the left / top half of its cell (and not in the first cell): the left / top
            # neighbour also predicts it; right / bottom likewise, measured from the far side.
            left, top = ((gxy_t % 1 < 0.5) & (gxy_t > 1)).T
            right, bottom = ((gxy_inv % 1 < 0.5) & (gxy_inv > 1)).T
            use = torch.stack([torch.ones_like(left), left, top, right, bottom])  # [5, K]
            which, k = use.nonzero(as_tuple=True)
            gxy_k = gxy_t[k]
            cell = (gxy_k - offsets[which]).long()
            cell[:, 0].clamp_(0, w - 1)
            cell[:, 1].clamp_(0, h - 1)
            matches.append(AnchorMatches(
                image=image_index[target_idx][k], anchor=anchor_idx[k], cell_y=cell[:, 1], cell_x=cell[:, 0],
                box=torch.cat([gxy_k - cell.float(), gwh[target_idx][k]], dim=1),
                anchor_wh=anchors[anchor_idx[k]], label=labels[target_idx][k]))
        return matches

    def __call__(self, outputs: Sequence[Tensor], targets: Targets) -> LossResult:
        self._check_outputs(outputs, len(self.strides))
        nc = self.num_classes
        matches = self.assign([tuple(o.shape[-2:]) for o in outputs], targets)
        box_loss = outputs[0].new_zeros(())
        obj_loss = outputs[0].new_zeros(())
        cls_loss = outputs[0].new_zeros(())
        for out, anchors, m, balance in zip(outputs, self.anchors, matches, self.balance):
            b, _, h, w = out.shape
            na = len(anchors)
            pred = out.reshape(b, na, 5 + nc, h, w)
            obj_target = torch.zeros((b, na, h, w), dtype=out.dtype)
            if len(m.image):
                chosen = pred[m.image, m.anchor, :, m.cell_y, m.cell_x]  # [n, 5+nc]
                xy = chosen[:, :2].sigmoid() * 2 - 0.5
                wh = (chosen[:, 2:4].sigmoid() * 2) ** 2 * m.anchor_wh
                pred_box = _xyxy_from_centre(xy[:, 0], xy[:, 1], wh[:, 0], wh[:, 1])
                true_box = _xyxy_from_centre(m.box[:, 0], m.box[:, 1], m.box[:, 2], m.box[:, 3])
                ciou = aligned_iou(pred_box, true_box, "ciou")
                box_loss = box_loss + (1.0 - ciou).mean()
                # Objectness target = CIoU (clamped at 0); a cell matched twice keeps the best.
                flat = ((m.image * na + m.anchor) * h + m.cell_y) * w + m.cell_x
                obj_target = obj_target.flatten().scatter_reduce(
                    0, flat, ciou.detach().clamp(min=0).to(out.dtype), reduce="amax").reshape(b, na, h, w)
                cls_target = F.one_hot(m.label, nc).to(out.dtype)
                cls_loss = cls_loss + F.binary_cross_entropy_with_logits(chosen[:, 5:], cls_target)
            obj_loss = obj_loss + balance * F.binary_cross_entropy_with_logits(pred[:, :, 4], obj_target)
        box_loss, obj_loss, cls_loss = self.box_gain * box_loss, self.obj_gain * obj_loss, self.cls_gain * cls_loss
        total = box_loss + obj_loss + cls_loss
        return LossResult(total, {"box": _value(box_loss), "obj": _value(obj_loss), "cls": _value(cls_loss)})


# --- yolox (SimOTA, or task-aligned) -----------------------------------------------------------

@dataclass(frozen=True)
class GridAssignment:
    """Positives of a grid head: fg bool [B, A], gt_index int64 [B, A] (into Targets' G axis,
    meaningful where fg), and the soft class target score float32 [B, A] (IoU or alignment)."""

    fg: Tensor
    gt_index: Tensor
    score: Tensor


def _centre_prior(points: Tensor, strides: Tensor, targets: Targets, radius: float) -> tuple[Tensor, Tensor]:
    """(in_box, near_centre), bool [B, G, A]: point strictly inside the box; point within
    ``radius`` strides of the box centre on both axes. Padded boxes give False."""
    boxes = targets.boxes[:, :, None, :]  # [B, G, 1, 4]
    px, py = points[:, 0], points[:, 1]
    in_box = ((px > boxes[..., 0]) & (py > boxes[..., 1]) & (px < boxes[..., 2]) & (py < boxes[..., 3]))
    cx = (boxes[..., 0] + boxes[..., 2]) / 2
    cy = (boxes[..., 1] + boxes[..., 3]) / 2
    near = ((px - cx).abs() < radius * strides) & ((py - cy).abs() < radius * strides)
    valid = targets.valid[:, :, None]
    return in_box & valid, near & valid


def _class_prob(probs: Tensor, labels: Tensor) -> Tensor:
    """``probs [B, A, nc]``, ``labels [B, G]`` -> ``[B, G, A]``: each box's class probability at every point."""
    b, a, _ = probs.shape
    index = labels.clamp(min=0)[:, :, None].expand(b, labels.shape[1], a)
    return torch.gather(probs.transpose(1, 2), 1, index)


def _resolve_conflicts(matched: Tensor, preference: Tensor) -> Tensor:
    """``matched`` bool [B, G, A]: a point matched by several boxes keeps only the one with the
    highest ``preference`` [B, G, A] (e.g. IoU, or minus the cost)."""
    multiple = matched.sum(1) > 1  # [B, A]
    best = torch.where(matched, preference, torch.full_like(preference, -torch.inf)).argmax(1)  # [B, A]
    only_best = F.one_hot(best, matched.shape[1]).permute(0, 2, 1).bool()
    return torch.where(multiple[:, None, :], only_best & matched, matched)


# --- task-aligned assignment (TOOD; used by the dfl head and optionally by yolox) --------------

@torch.no_grad()
def task_aligned_assign(pred_boxes: Tensor, class_probs: Tensor, points: Tensor, strides: Tensor,
                        targets: Targets, *, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                        center_radius: float = 1.0) -> GridAssignment:
    """Task-aligned assignment (TOOD, as in YOLOv8 / YOLOv6 / PP-YOLOE).

    pred_boxes [B, A, 4] xyxy px, class_probs [B, A, nc] in [0, 1] (the detection score per
    class), points [A, 2] px, strides [A]. Candidates of a box: points strictly inside it, or
    within ``center_radius`` strides of its centre. Alignment t = s^alpha * IoU^beta, s = the
    predicted probability of the box's class; each box takes its ``topk`` best candidates, a
    point claimed twice keeps the box it overlaps most. The soft score of a positive is t
    normalised so that a box's best point gets that box's best IoU.
    """
    in_box, near = _centre_prior(points, strides, targets, center_radius)
    candidate = in_box | near
    iou = box_iou(targets.boxes, pred_boxes).clamp(min=0)  # [B, G, A]
    score = _class_prob(class_probs, targets.labels)
    metric = score.pow(alpha) * iou.pow(beta) * candidate
    k = min(topk, metric.shape[-1])
    # Rank candidates first by metric, ties (e.g. all-zero metrics at the start) by IoU.
    rank_key = metric + 1e-9 * iou + 1e-12 * candidate
    top = rank_key.topk(k, dim=-1).indices
    matched = torch.zeros_like(candidate).scatter_(-1, top, True) & candidate
    matched = _resolve_conflicts(matched, iou)
    fg = matched.any(1)
    gt_index = matched.float().argmax(1)
    metric = metric * matched
    best_metric = metric.amax(-1, keepdim=True)
    best_iou = (iou * matched).amax(-1, keepdim=True)
    # (Relative, not additive, guard: early metrics are ~IoU^6 ~ 1e-10 and an additive eps would
    # swamp them.)
    normalised = (metric * best_iou / best_metric.clamp(min=1e-30)).amax(1)  # [B, A]
    return GridAssignment(fg, gt_index, normalised * fg)


@_register
class YoloxLoss(DetectionLoss):
    """YOLOX loss with SimOTA assignment (batched over images with padded boxes).

    Candidates of a box: points (cell centres (cell + 0.5) * stride) inside it or within
    ``center_radius`` strides of its centre. Cost of (box, point) =
    BCE(sqrt(sig(cls) * sig(obj)), one-hot) summed over classes + 3 * -log(IoU) + 1e5 unless
    the point is both in the box and near its centre. Each box takes its k lowest-cost points,
    k = max(1, floor(sum of its 10 best IoUs)); a point claimed by several boxes keeps the
    cheapest. Loss, normalised by the number of positives: 5 * (1 - GIoU) + BCE(obj, fg) over
    all points + BCE(cls, one-hot * IoU) over positives.

    ``assigner="task_aligned"`` replaces SimOTA by :func:`task_aligned_assign` on the detection
    score sig(cls) * sig(obj) (candidates within ``center_radius`` strides; the class target is
    the normalised alignment instead of the IoU); the loss terms stay the same. SimOTA starts
    with one positive per box (dynamic k = sum of IoUs that are near 0 on an untrained net),
    the task-aligned assigner with ``topk``. Measured on the fixture it did not learn faster
    (mAP 0.025 vs SimOTA's 0.031 after 560 iterations of the depthwise net, benchmarks/RESULTS.md),
    so SimOTA stays the default.
    """

    kind = "yolox"
    ASSIGNERS = ("simota", "task_aligned")

    def __init__(self, spec: ModelSpec, center_radius: float = 2.5, iou_gain: float = 5.0, topk_iou: int = 10,
                 assigner: str = "simota") -> None:
        super().__init__(spec)
        if assigner not in self.ASSIGNERS:
            raise SpecError(f"yolox loss: assigner must be one of {', '.join(self.ASSIGNERS)}, got {assigner!r}")
        self.strides = _strides(spec)
        self.center_radius = center_radius
        self.iou_gain = iou_gain
        self.topk_iou = topk_iou
        self.assigner = assigner

    def decode(self, outputs: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(pred boxes [B, A, 4] xyxy px, raw [B, A, 5+nc], points [A, 2] px, strides [A])."""
        raw = _flatten_levels(outputs)
        cells, strides = _grid_points(outputs, self.strides)
        # xy = (reg + cell) * stride, wh = exp(reg) * stride (the spec's contract); the clamp
        # only guards exp against overflow on wild early predictions.
        xy = (raw[..., :2] + cells) * strides[:, None]
        wh = raw[..., 2:4].clamp(max=10.0).exp() * strides[:, None]
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=-1)
        return boxes, raw, (cells + 0.5) * strides[:, None], strides

    @torch.no_grad()
    def assign(self, pred_boxes: Tensor, cls_logits: Tensor, obj_logits: Tensor, points: Tensor, strides: Tensor,
               targets: Targets) -> GridAssignment:
        """SimOTA. pred_boxes [B, A, 4] px, cls_logits [B, A, nc], obj_logits [B, A, 1]."""
        in_box, near = _centre_prior(points, strides, targets, self.center_radius)
        candidate_point = (in_box | near).any(1, keepdim=True)  # [B, 1, A]: in some box's region
        candidate = candidate_point & targets.valid[:, :, None]
        iou = box_iou(targets.boxes, pred_boxes)  # [B, G, A]
        probs = (cls_logits.sigmoid() * obj_logits.sigmoid()).sqrt().clamp(1e-6, 1 - 1e-6)  # [B, A, nc]
        # BCE against one-hot(c) summed over classes = sum_k -log(1 - p_k) + log(1 - p_c) - log(p_c).
        neg_all = -torch.log1p(-probs).sum(-1)[:, None, :]  # [B, 1, A]
        p_c = _class_prob(probs, targets.labels)
        cls_cost = neg_all + torch.log1p(-p_c) - torch.log(p_c)
        cost = cls_cost + 3.0 * -torch.log(iou + 1e-8) + 1e5 * (~(in_box & near)).float()
        cost = torch.where(candidate, cost, torch.full_like(cost, 1e9))
        k_max = min(self.topk_iou, iou.shape[-1])
        dynamic_k = (iou * candidate).topk(k_max, dim=-1).values.sum(-1).int().clamp(min=1)  # [B, G]
        order = cost.topk(k_max, dim=-1, largest=False).indices  # [B, G, k_max]
        take = torch.arange(k_max)[None, None, :] < dynamic_k[..., None]
        matched = torch.zeros_like(candidate).scatter_(-1, order, take) & candidate
        matched = _resolve_conflicts(matched, -cost)
        fg = matched.any(1)
        gt_index = matched.float().argmax(1)
        score = torch.gather(iou, 1, gt_index[:, None, :])[:, 0] * fg
        return GridAssignment(fg, gt_index, score)

    def __call__(self, outputs: Sequence[Tensor], targets: Targets) -> LossResult:
        self._check_outputs(outputs, len(self.strides))
        nc = self.num_classes
        pred_boxes, raw, points, strides = self.decode(outputs)
        obj_logits, cls_logits = raw[..., 4:5], raw[..., 5:5 + nc]
        if self.assigner == "task_aligned":
            scores = cls_logits.detach().sigmoid() * obj_logits.detach().sigmoid()
            a = task_aligned_assign(pred_boxes.detach(), scores, points, strides, targets, topk=self.topk_iou,
                                    center_radius=self.center_radius)
        else:
            a = self.assign(pred_boxes.detach(), cls_logits.detach(), obj_logits.detach(), points, strides, targets)
        num_fg = max(int(a.fg.sum()), 1)
        true_boxes = torch.gather(targets.boxes, 1, a.gt_index[..., None].expand(-1, -1, 4))  # [B, A, 4]
        true_labels = torch.gather(targets.labels, 1, a.gt_index).clamp(min=0)
        giou = aligned_iou(pred_boxes[a.fg], true_boxes[a.fg], "giou")
        box_loss = self.iou_gain * (1.0 - giou).sum() / num_fg
        obj_loss = F.binary_cross_entropy_with_logits(obj_logits[..., 0], a.fg.float(), reduction="sum") / num_fg
        cls_target = F.one_hot(true_labels[a.fg], nc).float() * a.score[a.fg][:, None]
        cls_loss = F.binary_cross_entropy_with_logits(cls_logits[a.fg], cls_target, reduction="sum") / num_fg
        total = box_loss + obj_loss + cls_loss
        return LossResult(total, {"box": _value(box_loss), "obj": _value(obj_loss), "cls": _value(cls_loss)})


# --- dfl (YOLOv8 / YOLOv6): task-aligned assigner + DFL ----------------------------------------

def distribution_focal_loss(bin_logits: Tensor, target: Tensor) -> Tensor:
    """DFL (Li et al., Generalized Focal Loss): ``bin_logits [n, R]``, ``target [n]`` in [0, R-1).

    With l = floor(t) and r = l + 1 the two nearest bins, the loss is the cross-entropy towards
    both, weighted by closeness: (r - t) * CE(l) + (t - l) * CE(r). Its minimum puts the softmax
    expectation sum_i p_i * i exactly on t. Returns ``[n]``.
    """
    left = target.floor().long()
    weight_left = (left + 1).float() - target
    return (F.cross_entropy(bin_logits, left, reduction="none") * weight_left
            + F.cross_entropy(bin_logits, left + 1, reduction="none") * (1 - weight_left))


@_register
class DflLoss(DetectionLoss):
    """YOLOv8 / YOLOv6 loss: task-aligned assignment, BCE class, CIoU box and DFL.

    Candidates of a box: anchor points ((cell + 0.5) * stride) strictly inside it, or within
    ``center_radius`` strides of its centre (so a box smaller than a cell still has candidates
    on every level). Alignment metric t = s^alpha * IoU^beta (s: predicted probability of the
    box's class, alpha 0.5, beta 6); each box takes its ``topk`` best candidates, a point claimed
    twice keeps the box it overlaps most. Soft class target at a positive: t normalised so a
    box's best point gets that box's best IoU. Loss = box_gain * sum w (1 - CIoU) + dfl_gain *
    sum w DFL + cls_gain * sum BCE, each divided by the sum of the class targets, w = the
    point's class target.
    """

    kind = "dfl"

    def __init__(self, spec: ModelSpec, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                 center_radius: float = 1.0, box_gain: float = 7.5, cls_gain: float = 0.5,
                 dfl_gain: float = 1.5) -> None:
        super().__init__(spec)
        self.strides = _strides(spec)
        self.reg_max = int(spec.head.params.get("reg_max") or 0)
        if self.reg_max < 2:
            raise SpecError(f"head kind 'dfl': training needs params.reg_max >= 2, got {self.reg_max}")
        self.topk, self.alpha, self.beta = topk, alpha, beta
        self.center_radius = center_radius
        self.box_gain, self.cls_gain, self.dfl_gain = box_gain, cls_gain, dfl_gain

    def decode(self, outputs: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(pred boxes [B, A, 4] px, bin logits [B, A, 4, R], cls logits [B, A, nc], points [A, 2] px, strides [A])."""
        raw = _flatten_levels(outputs)
        b, a, _ = raw.shape
        bins = raw[..., :4 * self.reg_max].reshape(b, a, 4, self.reg_max)
        cls_logits = raw[..., 4 * self.reg_max:]
        cells, strides = _grid_points(outputs, self.strides)
        points = (cells + 0.5) * strides[:, None]
        # ltrb = sum_i softmax(bins)_i * i, in strides, from the anchor point.
        ltrb = (bins.softmax(-1) * torch.arange(self.reg_max, dtype=raw.dtype)).sum(-1) * strides[:, None]
        boxes = torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)
        return boxes, bins, cls_logits, points, strides

    def assign(self, pred_boxes: Tensor, cls_logits: Tensor, points: Tensor, strides: Tensor,
               targets: Targets) -> GridAssignment:
        """Task-aligned assignment. pred_boxes [B, A, 4] px, cls_logits [B, A, nc]."""
        return task_aligned_assign(pred_boxes, cls_logits.sigmoid(), points, strides, targets, topk=self.topk,
                                   alpha=self.alpha, beta=self.beta, center_radius=self.center_radius)

    def __call__(self, outputs: Sequence[Tensor], targets: Targets) -> LossResult:
        self._check_outputs(outputs, len(self.strides))
        nc = self.num_classes
        pred_boxes, bins, cls_logits, points, strides = self.decode(outputs)
        a = self.assign(pred_boxes.detach(), cls_logits.detach(), points, strides, targets)
        true_labels = torch.gather(targets.labels, 1, a.gt_index).clamp(min=0)
        cls_target = F.one_hot(true_labels, nc).float() * a.score[..., None]
        target_sum = max(float(cls_target.sum()), 1.0)
        cls_loss = F.binary_cross_entropy_with_logits(cls_logits, cls_target, reduction="sum") / target_sum
        true_boxes = torch.gather(targets.boxes, 1, a.gt_index[..., None].expand(-1, -1, 4))[a.fg]
        weight = a.score[a.fg]
        ciou = aligned_iou(pred_boxes[a.fg], true_boxes, "ciou")
        box_loss = ((1.0 - ciou) * weight).sum() / target_sum
        # DFL targets: the true ltrb distances in strides, kept inside the bins' range.
        fg_points, fg_strides = points.expand(a.fg.shape[0], -1, -1)[a.fg], strides.expand(a.fg.shape[0], -1)[a.fg]
        ltrb = torch.cat([fg_points - true_boxes[:, :2], true_boxes[:, 2:] - fg_points], dim=1) / fg_strides[:, None]
        ltrb = ltrb.clamp(0, self.reg_max - 1 - 0.01)
        dfl = distribution_focal_loss(bins[a.fg].reshape(-1, self.reg_max), ltrb.reshape(-1)).view(-1, 4).mean(1)
        dfl_loss = (dfl * weight).sum() / target_sum
        box_loss, cls_loss, dfl_loss = self.box_gain * box_loss, self.cls_gain * cls_loss, self.dfl_gain * dfl_loss
        total = box_loss + cls_loss + dfl_loss
        return LossResult(total, {"box": _value(box_loss), "cls": _value(cls_loss), "dfl": _value(dfl_loss)})


# --- centernet ---------------------------------------------------------------------------------

def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CornerNet / CenterNet heat-map radius for a box of ``height`` x ``width`` (grid units).

    The smallest of three radii r such that a box whose corners are shifted by up to r still has
    IoU >= ``min_overlap`` with the true box (both corners moved in, both out, one of each); each
    is the positive root of a quadratic a r^2 + b r + c = 0. This is the formula as the CenterNet
    code computes it (including its well-known factor-2 slack), so heat maps match theirs.
    """
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


@dataclass(frozen=True)
class CenterNetTargets:
    """heatmap float32 [B, nc, H, W] in [0, 1] (1 exactly at centres); size, offset float32
    [B, 2, H, W] in grid units at the regression cells; mask bool [B, H, W]: cells that hold a
    centre; weight float32 [B, H, W]: regression weight per cell (1 at centres, or with dense
    regression each box's Gaussian over its cells, summing to 1 per box; 0 elsewhere)."""

    heatmap: Tensor
    size: Tensor
    offset: Tensor
    mask: Tensor
    weight: Tensor


@_register
class CenterNetLoss(DetectionLoss):
    """CenterNet (objects as points) loss.

    A box with centre c (grid units, c = box centre / stride) lands in cell floor(c); its class
    heat map gets exp(-(dx^2 + dy^2) / (2 sigma^2)) around that cell (maximum over boxes), with
    radius r = max(0, floor(gaussian_radius)) and sigma = (2r + 1) / 6. At the cell the targets
    are size (w, h) / stride and offset c - floor(c) (the decoder's box is
    (cell + offset) -/+ size / 2, times stride).

    Heat-map loss (penalty-reduced focal loss, alpha 2, beta 4), normalised by the number of
    objects N: -1/N sum [ (1-p)^2 log p at y = 1 ; (1-y)^4 p^2 log(1-p) elsewhere ].
    Plus size_gain * L1(size) + offset_gain * L1(offset) over centre cells, / N, plus
    giou_gain * (1 - GIoU) of the box the centre cell decodes to, / N (as TTFNet adds): the L1
    terms weigh a 2-cell error on a 20-cell box like one on a 2-cell box, while mAP@0.5:0.95 is
    scored on IoU, i.e. on the relative error; GIoU is scale-free. Off by default (``giou_gain=0``,
    CenterNet's original loss): on the width-0.25 fixture, 16 epochs with ``giou_gain=2`` gave mAP@.5:.95 0.461
    vs 0.459 without, and a lower mAP@.5 (0.709 vs 0.732).

    ``dense_regression`` (TTFNet's idea, within CenterNet's decoder): CenterNet trains size and
    offset only at the centre cell, but the decoder reads them at whichever cell peaks, and a peak
    one cell off (a centre near a cell border) decodes a box from untrained outputs, shifted by
    up to a cell. With the option every cell (r, c) inside a box's Gaussian window regresses that
    box: size (w, h) and offset (cx - c, cy - r), which the decoder's (cell + offset) +- size / 2
    turns back into the same box. Cell weights are the Gaussian values divided by their sum, so
    each box still contributes 1 (the loss scale of the original); where windows overlap the
    smaller box keeps the cell (boxes are written largest first), as in TTFNet. Off by default: on the
    width-0.25 fixture it gave 0.457 after 16 epochs (0.459 without); width, not the peak-cell
    offsets, was what that net lacked (benchmarks/RESULTS.md).
    """

    kind = "centernet"

    def __init__(self, spec: ModelSpec, size_gain: float = 0.1, offset_gain: float = 1.0,
                 min_overlap: float = 0.7, giou_gain: float = 0.0, dense_regression: bool = False) -> None:
        super().__init__(spec)
        stride = spec.head.params.get("stride")
        if not stride:
            raise SpecError("head kind 'centernet' needs params.stride")
        self.stride = float(stride)
        self.size_gain, self.offset_gain, self.min_overlap = size_gain, offset_gain, min_overlap
        self.giou_gain = giou_gain
        self.dense_regression = bool(dense_regression)

    def build_targets(self, grid_size: tuple[int, int], targets: Targets) -> CenterNetTargets:
        h, w = grid_size
        b = targets.batch_size
        heatmap = np.zeros((b, self.num_classes, h, w), np.float32)
        size = np.zeros((b, 2, h, w), np.float32)
        offset = np.zeros((b, 2, h, w), np.float32)
        mask = np.zeros((b, h, w), bool)
        weight = np.zeros((b, h, w), np.float32)
        boxes = targets.boxes.numpy() / self.stride
        labels = targets.labels.numpy()
        areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        # Largest box first, so a smaller box overwrites the cells it shares with a larger one: its whole
        # window with dense regression, or a shared centre cell without (before, the later box won).
        order = sorted(zip(*np.nonzero(labels >= 0)), key=lambda ij: (ij[0], -areas[ij]))
        for i, j in order:
            x1, y1, x2, y2 = boxes[i, j].tolist()
            bw, bh = x2 - x1, y2 - y1
            if bw <= 0 or bh <= 0:
                continue
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            col, row = min(max(int(math.floor(cx)), 0), w - 1), min(max(int(math.floor(cy)), 0), h - 1)
            radius = max(0, int(gaussian_radius(bh, bw, self.min_overlap)))
            sigma = (2 * radius + 1) / 6
            # Gaussian patch around (row, col), clipped to the map.
            r0, r1 = max(0, row - radius), min(h, row + radius + 1)
            c0, c1 = max(0, col - radius), min(w, col + radius + 1)
            dy = np.arange(r0, r1)[:, None] - row
            dx = np.arange(c0, c1)[None, :] - col
            patch = np.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)).astype(np.float32)
            region = heatmap[i, labels[i, j], r0:r1, c0:c1]
            np.maximum(region, patch, out=region)
            if self.dense_regression:
                size[i, 0, r0:r1, c0:c1], size[i, 1, r0:r1, c0:c1] = bw, bh
                offset[i, 0, r0:r1, c0:c1] = cx - np.arange(c0, c1)[None, :]
                offset[i, 1, r0:r1, c0:c1] = cy - np.arange(r0, r1)[:, None]
                weight[i, r0:r1, c0:c1] = patch / patch.sum()
            else:
                size[i, :, row, col] = (bw, bh)
                offset[i, :, row, col] = (cx - col, cy - row)
                weight[i, row, col] = 1.0
            mask[i, row, col] = True
        return CenterNetTargets(torch.from_numpy(heatmap), torch.from_numpy(size), torch.from_numpy(offset),
                                torch.from_numpy(mask), torch.from_numpy(weight))

    def __call__(self, outputs: Sequence[Tensor], targets: Targets) -> LossResult:
        self._check_outputs(outputs, 3)
        heat_logits, size_pred, offset_pred = outputs
        t = self.build_targets(tuple(heat_logits.shape[-2:]), targets)
        num = max(int(t.mask.sum()), 1)
        # log p and log(1 - p) from the logits directly (log-sigmoid), clamped like CenterNet's
        # sigmoid clamp to [1e-4, 1 - 1e-4] so confident mistakes cannot dominate.
        log_p = F.logsigmoid(heat_logits).clamp(min=math.log(1e-4))
        log_not_p = F.logsigmoid(-heat_logits).clamp(min=math.log(1e-4))
        p = heat_logits.sigmoid()
        positive = t.heatmap.eq(1.0)
        pos_loss = ((1 - p) ** 2 * log_p)[positive].sum()
        neg_loss = ((1 - t.heatmap) ** 4 * p ** 2 * log_not_p)[~positive].sum()
        heat_loss = -(pos_loss + neg_loss) / num
        # Regression cells (centres, or every weighted cell with dense regression): [N_cells].
        image, row, col = (t.weight > 0).nonzero(as_tuple=True)
        cell_weight = t.weight[image, row, col][:, None]

        def at_cells(x: Tensor) -> Tensor:
            return x[image, :, row, col]  # [N_cells, 2]

        size_loss = self.size_gain * (cell_weight * (at_cells(size_pred) - at_cells(t.size)).abs()).sum() / num
        offset_loss = (self.offset_gain * (cell_weight * (at_cells(offset_pred) - at_cells(t.offset)).abs()).sum()
                       / num)
        total = heat_loss + size_loss + offset_loss
        parts = {"heat": _value(heat_loss), "size": _value(size_loss), "offset": _value(offset_loss)}
        if self.giou_gain:
            # Boxes at the regression cells in grid units: (cell + offset) -/+ size / 2, as the decoder does.
            cells = torch.stack([col, row], dim=1).to(size_pred.dtype)

            def boxes(size: Tensor, offset: Tensor) -> Tensor:
                centre = cells + at_cells(offset)
                half = at_cells(size) / 2
                return torch.cat([centre - half, centre + half], dim=1)

            giou = aligned_iou(boxes(size_pred, offset_pred), boxes(t.size, t.offset), "giou")
            giou_loss = self.giou_gain * (cell_weight[:, 0] * (1.0 - giou)).sum() / num
            total = total + giou_loss
            parts["giou"] = _value(giou_loss)
        return LossResult(total, parts)


# --- ssd ---------------------------------------------------------------------------------------

def ssd_encode(boxes: Tensor, priors: Tensor, variances: tuple[float, float]) -> Tensor:
    """Inverse of the SSD decoder: xyxy ``boxes [..., 4]`` and priors ``[..., 4]`` (cx, cy, w, h),
    both normalised, -> offsets ``[..., 4]``: ((cx - p_cx) / (v0 p_w), (cy - p_cy) / (v0 p_h),
    log(w / p_w) / v1, log(h / p_h) / v1)."""
    v0, v1 = variances
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    size = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1e-6)
    return torch.cat([(centre - priors[..., :2]) / (v0 * priors[..., 2:]),
                      torch.log(size / priors[..., 2:]) / v1], dim=-1)


@dataclass(frozen=True)
class PriorMatches:
    """labels int64 [B, P]: 0 background, 1 + class for matched priors; gt_index int64 [B, P]."""

    labels: Tensor
    gt_index: Tensor


@_register
class SsdLoss(DetectionLoss):
    """SSD MultiBox loss.

    Matching: every prior takes the box it overlaps most; it is positive if that IoU >=
    ``iou_threshold`` (0.5). Every box additionally claims its own best prior (so no box goes
    unmatched). Loss, divided by the number of positives N: smooth-L1 on the variance-encoded
    offsets of positives + softmax cross-entropy over positives and the ``neg_pos_ratio`` x
    (per image) negatives with the highest background loss (hard negative mining).
    """

    kind = "ssd"

    def __init__(self, spec: ModelSpec, iou_threshold: float = 0.5, neg_pos_ratio: float = 3.0) -> None:
        super().__init__(spec)
        self.priors = torch.from_numpy(ssd_priors(spec.head.params, spec.input_size).copy())  # [P, 4] cx cy w h
        variances = spec.head.params.get("variances") or (0.1, 0.2)
        self.variances = (float(variances[0]), float(variances[1]))
        self.iou_threshold, self.neg_pos_ratio = iou_threshold, neg_pos_ratio
        in_h, in_w = spec.input_size
        self.input_scale = torch.tensor([in_w, in_h, in_w, in_h], dtype=torch.float32)
        p = self.priors
        self.prior_boxes = torch.cat([p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2], dim=1)

    @torch.no_grad()
    def assign(self, targets: Targets) -> PriorMatches:
        boxes = targets.boxes / self.input_scale
        iou = box_iou(boxes, self.prior_boxes) * targets.valid[:, :, None]  # [B, G, P]
        overlap, gt_index = iou.max(1)  # [B, P]
        best_prior = iou.argmax(2)  # [B, G]
        rows = torch.arange(targets.batch_size)
        # Boxes in order, so a later box wins a prior that two boxes call their best (as in SSD).
        for g in range(iou.shape[1]):
            real = targets.valid[:, g]
            overlap[rows[real], best_prior[real, g]] = 2.0
            gt_index[rows[real], best_prior[real, g]] = g
        labels = torch.gather(targets.labels, 1, gt_index) + 1
        labels = torch.where(overlap >= self.iou_threshold, labels, torch.zeros_like(labels))
        return PriorMatches(labels, gt_index)

    def __call__(self, outputs: Sequence[Tensor], targets: Targets) -> LossResult:
        self._check_outputs(outputs, 2)
        loc, conf = outputs
        m = self.assign(targets)
        positive = m.labels > 0
        num = max(int(positive.sum()), 1)
        boxes = torch.gather(targets.boxes, 1, m.gt_index[..., None].expand(-1, -1, 4)) / self.input_scale
        encoded = ssd_encode(boxes[positive], self.priors.expand(len(boxes), -1, -1)[positive], self.variances)
        loc_loss = F.smooth_l1_loss(loc[positive], encoded, reduction="sum") / num
        ce = F.cross_entropy(conf.reshape(-1, conf.shape[-1]), m.labels.reshape(-1), reduction="none").view_as(m.labels)
        with torch.no_grad():
            background_loss = ce.masked_fill(positive, 0.0)
            rank = background_loss.argsort(1, descending=True).argsort(1)
            num_neg = (self.neg_pos_ratio * positive.sum(1, keepdim=True)).clamp(max=positive.shape[1] - 1)
            negative = (rank < num_neg) & ~positive
        conf_loss = ce[positive | negative].sum() / num
        return LossResult(loc_loss + conf_loss, {"loc": _value(loc_loss), "conf": _value(conf_loss)})


# ==============================================================================================
# Training loop
# ==============================================================================================

def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch and return the numpy ``Generator`` that drives data order and augmentation."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``warmup_iterations`` ramp the learning rate linearly from 0; then
    it follows a cosine from ``learning_rate`` down to ``learning_rate * final_lr_fraction``.
    EMA decay ramps as ``ema_decay * (1 - exp(-step / ema_ramp))`` so early averages are short."""

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 2e-3
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.01
    warmup_iterations: int = 100
    grad_clip: float = 10.0
    ema_decay: float = 0.998
    ema_ramp: float = 200.0
    seed: int = 0
    num_threads: int = 2
    channels_last: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    progress: bool = True


@dataclass
class TrainResult:
    """The trained model (EMA weights, eval mode), per-epoch mean losses, wall-clock and CPU
    time (``cpu_seconds`` sums all threads of this process: on a shared machine it is the
    steadier measure of what training costs)."""

    model: nn.Module
    history: list[dict[str, float]]
    seconds: float
    iterations: int
    cpu_seconds: float = 0.0


class ModelEMA:
    """Exponential moving average of every floating-point entry of a model's state_dict
    (weights and BatchNorm statistics): ema = d * ema + (1 - d) * current."""

    def __init__(self, model: nn.Module, decay: float, ramp: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(current[name].detach(), alpha=1 - d)
            else:
                value.copy_(current[name])


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv / linear weights only: decaying BN scales and biases hurts small nets."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_norm = isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.BatchNorm1d))
            (no_decay if name == "bias" or is_norm else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _save_atomic(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a sibling temporary file, then rename: an interrupted save leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(payload, tmp)
    tmp.replace(path)


def train(model: nn.Module, data: TrainingSet, config: TrainConfig = TrainConfig(),
          loss_fn: DetectionLoss | None = None,
          on_epoch_end: Callable[[int, nn.Module, dict[str, float]], None] | None = None,
          resume_path: str | Path | None = None) -> TrainResult:
    """Train ``model`` (with ``.spec``) on ``data`` for ``config.epochs`` epochs.

    Returns a :class:`TrainResult` whose model is a copy holding the EMA weights (in eval mode);
    ``model`` itself keeps the raw weights. ``on_epoch_end(epoch, ema_model, mean_losses)`` is
    called after every epoch (e.g. to evaluate).

    ``resume_path``: after every epoch the complete training state (weights, EMA, optimizer,
    both random generators, history) is written there; if the file exists at the start,
    training continues from it, exactly where it stopped — the result is the same as an
    uninterrupted run. It must come from the same family, data size and ``config``.
    """
    from tqdm import tqdm

    if config.epochs < 1 or config.batch_size < 1:
        raise InputError(f"training needs epochs >= 1 and batch_size >= 1, got {config.epochs} and {config.batch_size}")
    torch.set_num_threads(max(1, int(config.num_threads)))
    rng = seed_everything(config.seed)
    spec: ModelSpec = model.spec
    loss_fn = loss_fn or make_loss(spec)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.learning_rate,
                                  betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = min(config.warmup_iterations, max(total_steps // 3, 1))

    def learning_rate(step: int) -> float:
        if step < warmup:
            return config.learning_rate * (step + 1) / warmup
        progress = (step - warmup) / max(total_steps - warmup, 1)
        low = config.final_lr_fraction
        return config.learning_rate * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress)))

    # NHWC convolutions are ~15 % faster on CPU (oneDNN); the weights go back to NCHW at the end.
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    ema = ModelEMA(model, config.ema_decay, config.ema_ramp)
    history: list[dict[str, float]] = []
    step = 0
    first_epoch = 0
    start = time.perf_counter()
    cpu_start = time.process_time()
    # Threads and progress bars do not change the result, so a run may resume with other values.
    fingerprint = f"{spec.family} {spec.input_size} images={len(data)} {replace(config, num_threads=0, progress=False)!r}"
    resume_path = Path(resume_path) if resume_path is not None else None
    if resume_path is not None and resume_path.is_file():
        state = torch.load(resume_path, weights_only=True)
        if state.get("fingerprint") != fingerprint:
            raise InputError(f"{resume_path}: was written by a different training run "
                             f"({state.get('fingerprint')!r}); expected {fingerprint!r}. Delete it to start over")
        model.load_state_dict(state["model"])
        ema.module.load_state_dict(state["ema"])
        ema.updates = int(state["ema_updates"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        history, step, first_epoch = list(state["history"]), int(state["step"]), int(state["epoch"])
        # Keep the clocks running from where the interrupted run left them.
        start -= float(state["seconds"])
        cpu_start -= float(state["cpu_seconds"])
    model.train()
    for epoch in range(first_epoch, config.epochs):
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm(data.batches(config.batch_size, rng, config.augment), total=steps_per_epoch,
                   desc=f"{spec.family} {epoch + 1}/{config.epochs}", unit="batch", leave=False,
                   disable=not config.progress, dynamic_ncols=True)
        for batch in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step)
            outputs = model(batch.images.contiguous(memory_format=memory_format))
            if isinstance(outputs, Tensor):
                outputs = (outputs,)
            result = loss_fn(outputs, batch.targets)
            if not torch.isfinite(result.total):
                raise FloatingPointError(f"{spec.family}: loss became {float(result.total)} at epoch {epoch + 1} "
                                         f"step {step}; parts {result.parts}")
            optimizer.zero_grad(set_to_none=True)
            result.total.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            ema.update(model)
            step += 1
            count += 1
            sums["loss"] = sums.get("loss", 0.0) + _value(result.total)
            for key, value in result.parts.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix({k: f"{v / count:.3f}" for k, v in sums.items()})
        bar.close()
        means = {k: v / max(count, 1) for k, v in sums.items()}
        means["epoch"] = epoch + 1
        means["seconds"] = time.perf_counter() - start
        means["cpu_seconds"] = time.process_time() - cpu_start
        history.append(means)
        if resume_path is not None:
            _save_atomic({
                "fingerprint": fingerprint, "epoch": epoch + 1, "step": step, "model": model.state_dict(),
                "ema": ema.module.state_dict(), "ema_updates": ema.updates, "optimizer": optimizer.state_dict(),
                "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "history": history,
                "seconds": means["seconds"], "cpu_seconds": means["cpu_seconds"],
            }, resume_path)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, ema.module, means)
    model.to(memory_format=torch.contiguous_format)
    trained = ema.module.eval().to(memory_format=torch.contiguous_format)
    for name in ("spec", "config"):
        if hasattr(model, name):
            setattr(trained, name, getattr(model, name))
    return TrainResult(trained, history, time.perf_counter() - start, step, time.process_time() - cpu_start)


# ==============================================================================================
# Evaluation
# ==============================================================================================

def detect_images(model: nn.Module, images: Sequence[np.ndarray], postprocess_spec: PostprocessSpec,
                  batch_size: int = 32) -> list[Any]:
    """Run a torch ``model`` (with ``.spec``) on uint8 RGB images -> one ``Detections`` per image.

    Preprocessing, decoding and NMS are the runtime's numpy code (``edgekit.runtime``): the
    same path every deployed backend takes, so a fixture's recorded mAP is what the runtime
    reproduces. (The reference NMS is a deliberately plain Python loop: too slow for scoring
    untrained models, whose thousands of low-score boxes all survive a 0.001 threshold.)
    """
    from edgekit.runtime.decode import decode
    from edgekit.runtime.detections import Detections
    from edgekit.runtime.nms import postprocess
    from edgekit.runtime.preprocess import boxes_to_original, preprocess

    spec: ModelSpec = model.spec
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(images), batch_size):
            tensor, transforms = preprocess(list(images[start:start + batch_size]), spec)
            with torch.no_grad():
                outputs = model(torch.from_numpy(tensor))
            if isinstance(outputs, Tensor):
                outputs = (outputs,)
            candidates = decode([o.float().numpy() for o in outputs], spec)
            kept = postprocess(candidates.boxes, candidates.scores, candidates.labels,
                               conf_threshold=postprocess_spec.conf_threshold,
                               iou_threshold=postprocess_spec.iou_threshold,
                               class_agnostic=postprocess_spec.class_agnostic,
                               pre_nms_topk=postprocess_spec.pre_nms_topk,
                               max_detections=postprocess_spec.max_detections,
                               apply_nms=postprocess_spec.nms)
            results += [Detections(boxes_to_original(b, t), s, lab) for (b, s, lab), t in zip(kept, transforms)]
    finally:
        model.train(was_training)
    return results


def evaluate(model: nn.Module, dataset: Any, *, batch_size: int = 32,
             images: Sequence[np.ndarray] | None = None) -> Any:
    """COCO mAP of a torch ``model`` (with ``.spec``) on ``dataset``: returns a ``MapResult``.

    The post-processing is ``edgekit validate``'s mAP protocol (``edgekit.validate.run.map_postprocess``:
    score 0.001, NMS IoU 0.6, up to 100 detections per image, NMS on/off and class-agnostic from
    ``model.spec``), taken from there so a fixture's recorded mAP and a later validation cannot
    drift apart. ``images`` (uint8 RGB, in ``dataset.items`` order) skips reading the files again.
    See :func:`detect_images`.
    """
    from edgekit.validate.coco_eval import evaluate_detections
    from edgekit.validate.run import map_postprocess

    post = map_postprocess(model.spec)
    items = list(dataset.items)
    if images is None:
        images = [load_image(dataset.image_path(item)) for item in items]
    elif len(images) != len(items):
        raise InputError(f"evaluate: {len(images)} images given for a dataset of {len(items)}")
    detections = detect_images(model, images, post, batch_size)
    return evaluate_detections(dataset, {item.image_id: d for item, d in zip(items, detections)})
