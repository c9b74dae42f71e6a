"""YOLOv8 / YOLOv6 ``dfl`` loss: task-aligned assigner, CIoU box loss and distribution focal loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from edgekit.errors import SpecError
from edgekit.models.training.boxes import aligned_iou
from edgekit.models.training.data import Targets
from edgekit.models.training.losses.assign import GridAssignment, task_aligned_assign
from edgekit.models.training.losses.base import DetectionLoss, LossResult, loss_value, register_loss
from edgekit.models.training.losses.grid import flatten_levels, grid_points, head_strides
from edgekit.spec import ModelSpec

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


@register_loss
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
        self.strides = head_strides(spec)
        self.reg_max = int(spec.head.params.get("reg_max") or 0)
        if self.reg_max < 2:
            raise SpecError(f"head kind 'dfl': training needs params.reg_max >= 2, got {self.reg_max}")
        self.topk, self.alpha, self.beta = topk, alpha, beta
        self.center_radius = center_radius
        self.box_gain, self.cls_gain, self.dfl_gain = box_gain, cls_gain, dfl_gain

    def decode(self, outputs: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(pred boxes [B, A, 4] px, bin logits [B, A, 4, R], cls logits [B, A, nc], points [A, 2] px, strides [A])."""
        raw = flatten_levels(outputs)
        b, a, _ = raw.shape
        bins = raw[..., :4 * self.reg_max].reshape(b, a, 4, self.reg_max)
        cls_logits = raw[..., 4 * self.reg_max:]
        cells, strides = grid_points(outputs, self.strides)
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
        return LossResult(total, {"box": loss_value(box_loss), "cls": loss_value(cls_loss), "dfl": loss_value(dfl_loss)})
