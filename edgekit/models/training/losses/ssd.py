"""SSD loss: IoU prior matching, smooth-L1 on variance-encoded offsets, cross-entropy with hard negative mining."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from edgekit.models.training.boxes import box_iou
from edgekit.models.training.data import Targets
from edgekit.models.training.losses.base import DetectionLoss, LossResult, loss_value, register_loss
from edgekit.runtime.decode import ssd_priors
from edgekit.spec import ModelSpec

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


@register_loss
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
        return LossResult(loc_loss + conf_loss, {"loc": loss_value(loc_loss), "conf": loss_value(conf_loss)})
