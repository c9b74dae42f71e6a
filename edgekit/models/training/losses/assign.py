"""Assignment of ground-truth boxes to grid points: the shared pieces (centre prior, conflicts) and the
task-aligned assigner (TOOD), used by the dfl head and optionally by yolox."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from edgekit.models.training.boxes import box_iou
from edgekit.models.training.data import Targets


@dataclass(frozen=True)
class GridAssignment:
    """Positives of a grid head: fg bool [B, A], gt_index int64 [B, A] (into Targets' G axis,
    meaningful where fg), and the soft class target score float32 [B, A] (IoU or alignment)."""

    fg: Tensor
    gt_index: Tensor
    score: Tensor


def centre_prior(points: Tensor, strides: Tensor, targets: Targets, radius: float) -> tuple[Tensor, Tensor]:
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


def class_prob(probs: Tensor, labels: Tensor) -> Tensor:
    """``probs [B, A, nc]``, ``labels [B, G]`` -> ``[B, G, A]``: each box's class probability at every point."""
    b, a, _ = probs.shape
    index = labels.clamp(min=0)[:, :, None].expand(b, labels.shape[1], a)
    return torch.gather(probs.transpose(1, 2), 1, index)


def resolve_conflicts(matched: Tensor, preference: Tensor) -> Tensor:
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
    in_box, near = centre_prior(points, strides, targets, center_radius)
    candidate = in_box | near
    iou = box_iou(targets.boxes, pred_boxes).clamp(min=0)  # [B, G, A]
    score = class_prob(class_probs, targets.labels)
    metric = score.pow(alpha) * iou.pow(beta) * candidate
    k = min(topk, metric.shape[-1])
    # Rank candidates first by metric, ties (e.g. all-zero metrics at the start) by IoU.
    rank_key = metric + 1e-9 * iou + 1e-12 * candidate
    top = rank_key.topk(k, dim=-1).indices
    matched = torch.zeros_like(candidate).scatter_(-1, top, True) & candidate
    matched = resolve_conflicts(matched, iou)
    fg = matched.any(1)
    gt_index = matched.float().argmax(1)
    metric = metric * matched
    best_metric = metric.amax(-1, keepdim=True)
    best_iou = (iou * matched).amax(-1, keepdim=True)
    # (Relative, not additive, guard: early metrics are ~IoU^6 ~ 1e-10 and an additive eps would
    # swamp them.)
    normalised = (metric * best_iou / best_metric.clamp(min=1e-30)).amax(1)  # [B, A]
    return GridAssignment(fg, gt_index, normalised * fg)
