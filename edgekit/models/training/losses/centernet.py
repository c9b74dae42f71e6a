"""CenterNet loss: Gaussian heat map (CornerNet radius), penalty-reduced focal loss, L1 size and offset."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgekit.errors import SpecError
from edgekit.models.training.boxes import aligned_iou
from edgekit.models.training.data import Targets
from edgekit.models.training.losses.base import DetectionLoss, LossResult, loss_value, register_loss
from edgekit.spec import ModelSpec

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


@register_loss
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
        t = self.build_targets((int(heat_logits.shape[-2]), int(heat_logits.shape[-1])), targets)
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
        parts = {"heat": loss_value(heat_loss), "size": loss_value(size_loss), "offset": loss_value(offset_loss)}
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
            parts["giou"] = loss_value(giou_loss)
        return LossResult(total, parts)
