"""YOLOv5 ``yolo_anchor`` loss: anchors whose w/h ratio to the box is < 4 in the centre cell and its two nearest
neighbours; CIoU box loss, BCE objectness (target = CIoU), BCE class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from edgekit.errors import SpecError
from edgekit.models.training.boxes import EPS, aligned_iou, xyxy_from_centre
from edgekit.models.training.data import Targets
from edgekit.models.training.losses.base import DetectionLoss, LossResult, loss_value, register_loss
from edgekit.models.training.losses.grid import head_strides
from edgekit.spec import ModelSpec

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


@register_loss
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
        self.strides = head_strides(spec)
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
            fits = torch.maximum(ratio, 1 / ratio.clamp(min=EPS)).amax(-1) < self.anchor_ratio
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
        matches = self.assign([(int(o.shape[-2]), int(o.shape[-1])) for o in outputs], targets)
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
                pred_box = xyxy_from_centre(xy[:, 0], xy[:, 1], wh[:, 0], wh[:, 1])
                true_box = xyxy_from_centre(m.box[:, 0], m.box[:, 1], m.box[:, 2], m.box[:, 3])
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
        return LossResult(total, {"box": loss_value(box_loss), "obj": loss_value(obj_loss), "cls": loss_value(cls_loss)})
