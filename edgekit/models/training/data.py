"""Training data: ground truth per batch (:class:`Targets`), in-memory images, augmentation in original-image
pixels, and the runtime's own letterbox / normalisation (training and deployment preprocess identically)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from edgekit.errors import InputError, SpecError
from edgekit.runtime.preprocess import load_image, resize_to_input, to_tensor
from edgekit.spec import ModelSpec

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
