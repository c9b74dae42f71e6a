"""Reference NMS and post-processing in torch, written as the obvious greedy loop.

This is the oracle ``edgekit.runtime.nms`` is checked against and the NMS of the PyTorch
reference path (``edgekit detect --backend torch``). Clarity over speed: no tricks.

Semantics (the same as ``edgekit.runtime.nms``, ONNX ``NonMaxSuppression`` and torchvision ``nms``):

- Boxes are xyxy. IoU = inter / (area_a + area_b - inter) in float32; a box with width or height
  <= 0 (or a non-finite coordinate) has IoU 0 with everything.
- Visit boxes by descending score (stable: equal scores in index order). Keep a box unless it was
  suppressed; a kept box suppresses every box whose IoU with it is strictly greater than
  ``iou_threshold`` (compared in float32) — and, for class-aware NMS, that has the same label.
"""

from __future__ import annotations

import math

import torch

from edgekit.errors import InputError
from edgekit.runtime.nms import check_iou_threshold

__all__ = ["batched_nms", "box_iou", "nms", "postprocess"]


# input checking is not the oracle's business: the runtime's check (a Python float, no float32 rounding here)
_check_iou_threshold = check_iou_threshold


def _check_boxes(boxes: torch.Tensor, where: str) -> torch.Tensor:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"{where}: boxes must have shape [N, 4] (xyxy), got {tuple(boxes.shape)}")
    return boxes.float()


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes ``a`` [N, 4] and ``b`` [M, 4] -> float32 [N, M]."""
    a = _check_boxes(a, "box_iou")
    b = _check_boxes(b, "box_iou")
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    inter_w = torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])
    inter_h = torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])
    inter = inter_w.clamp(min=0) * inter_h.clamp(min=0)
    union = area_a[:, None] + area_b[None, :] - inter
    defined = (inter > 0) & (area_a[:, None] > 0) & (area_b[None, :] > 0) & (union > 0)
    return torch.where(defined, inter / union, torch.zeros_like(inter))


def _greedy(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor | None,
            iou_threshold: float) -> torch.Tensor:
    """The greedy loop; ``labels`` None means every box may suppress every other box."""
    threshold = torch.tensor(iou_threshold, dtype=torch.float32)
    order = torch.argsort(scores, descending=True, stable=True)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        overlaps = box_iou(boxes[i:i + 1], boxes)[0] > threshold
        if labels is not None:
            overlaps &= labels == labels[i]
        # Marks i itself and boxes already visited too; harmless, they are never looked at again.
        suppressed |= overlaps
    return torch.tensor(keep, dtype=torch.int64)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Single-class greedy NMS: int64 [K] indices of kept boxes, descending score (ties by index)."""
    boxes = _check_boxes(boxes, "nms")
    iou_threshold = _check_iou_threshold(iou_threshold, "nms")
    return _greedy(boxes, scores, None, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float,
                class_agnostic: bool = False) -> torch.Tensor:
    """Class-aware greedy NMS (a box only suppresses boxes of its label); ``class_agnostic`` ignores labels."""
    boxes = _check_boxes(boxes, "batched_nms")
    iou_threshold = _check_iou_threshold(iou_threshold, "batched_nms")
    return _greedy(boxes, scores, None if class_agnostic else labels, iou_threshold)


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *, conf_threshold: float,
                iou_threshold: float, class_agnostic: bool, pre_nms_topk: int, max_detections: int,
                apply_nms: bool = True) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image of boxes [B, N, 4] xyxy, scores [B, N], labels [B, N]: score > conf_threshold
    (float32), the pre_nms_topk best (ties by index), NMS unless ``apply_nms`` is False, then at
    most max_detections. Returns (boxes float32 [K, 4], scores float32 [K] descending, labels int64 [K])."""
    iou_threshold = _check_iou_threshold(iou_threshold, "postprocess")
    if not (math.isfinite(conf_threshold) and 0.0 <= conf_threshold <= 1.0):
        raise InputError(f"postprocess: conf_threshold must be in [0, 1], got {conf_threshold!r}")
    if pre_nms_topk < 1 or max_detections < 1:
        raise InputError("postprocess: pre_nms_topk and max_detections must be integers >= 1")
    results = []
    for image_boxes, image_scores, image_labels in zip(boxes.float(), scores.float(), labels.long()):
        passed = torch.nonzero(image_scores > conf_threshold).flatten()
        order = torch.argsort(image_scores[passed], descending=True, stable=True)
        candidates = passed[order][:pre_nms_topk]
        if apply_nms:
            kept = batched_nms(image_boxes[candidates], image_scores[candidates], image_labels[candidates],
                               iou_threshold, class_agnostic=class_agnostic)
            candidates = candidates[kept]
        candidates = candidates[:max_detections]
        results.append((image_boxes[candidates], image_scores[candidates], image_labels[candidates]))
    return results
