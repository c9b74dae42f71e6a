"""Box geometry for the training losses: IoU matrices and aligned IoU / GIoU / CIoU (xyxy tensors)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# ==============================================================================================
# Box geometry
# ==============================================================================================

EPS = 1e-7


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes: ``a [..., N, 4]``, ``b [..., M, 4]`` -> ``[..., N, M]``.

    Degenerate (zero-area) boxes give IoU 0, never NaN.
    """
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter + EPS)


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
    union = aw * ah + bw * bh - inter + EPS
    iou = inter / union
    if kind == "iou":
        return iou
    cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    if kind == "giou":
        enclosing = cw * ch + EPS
        return iou - (enclosing - union) / enclosing
    if kind == "ciou":
        diagonal2 = cw ** 2 + ch ** 2 + EPS
        rho2 = ((a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2]) ** 2
                + (a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]) ** 2) / 4
        v = (4 / math.pi ** 2) * (torch.atan(bw / (bh + EPS)) - torch.atan(aw / (ah + EPS))) ** 2
        with torch.no_grad():
            alpha = v / (v - iou + (1 + EPS))
        return iou - (rho2 / diagonal2 + v * alpha)
    raise ValueError(f"aligned_iou: kind must be 'iou', 'giou' or 'ciou', got {kind!r}")


def xyxy_from_centre(cx: Tensor, cy: Tensor, w: Tensor, h: Tensor) -> Tensor:
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
