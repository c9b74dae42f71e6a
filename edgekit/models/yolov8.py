"""YOLOv8: C2f backbone and PAN neck, SPPF, anchor-free decoupled head with DFL box regression.

Head kind ``dfl``: one raw tensor per level (strides 8, 16, 32) of shape ``[B, 4 * reg_max + nc, H / s, W / s]``
= concat(box bins [4 * reg_max], cls logits [nc]); no objectness. Decoding (edgekit.runtime.decode):
per side, ``sum_i softmax(bins)_i * i * s`` from the anchor point ``(grid + 0.5) * s``.

Layout follows ultralytics' yolov8.yaml; channel counts are capped at ``max_channels`` before width
scaling (the yaml's own mechanism; 384 here instead of the n scale's 1024) so the width-0.25 model
stays ~1.3 M parameters for CPU training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from edgekit.models import ModelConfig, detector_spec
from edgekit.models.base import DetectorModel
from edgekit.models.common import SPPF, C2f, ConvBNAct, conv_bias, scale_channels, scale_depth, upsample2x
from edgekit.spec import HeadSpec

STRIDES = (8, 16, 32)
OUTPUT_NAMES = ("p3", "p4", "p5")
DEFAULT_REG_MAX = 16


class DFLDetect(nn.Module):
    """Per level a box branch (two 3x3 convs, 1x1 -> 4 * reg_max) and a cls branch (two 3x3 convs,
    1x1 -> nc); output ``cat(box, cls)``: [B, 4 * reg_max + nc, H_i, W_i]."""

    def __init__(self, num_classes: int, in_channels: Sequence[int], reg_max: int, strides: Sequence[int],
                 input_size: tuple[int, int]) -> None:
        super().__init__()
        box_hidden = max(16, in_channels[0] // 4, 4 * reg_max)
        cls_hidden = max(in_channels[0], min(num_classes, 100))
        box_branches = [nn.Sequential(ConvBNAct(c, box_hidden, 3), ConvBNAct(box_hidden, box_hidden, 3),
                                      nn.Conv2d(box_hidden, 4 * reg_max, 1))
                        for c in in_channels]
        cls_branches = [nn.Sequential(ConvBNAct(c, cls_hidden, 3), ConvBNAct(cls_hidden, cls_hidden, 3),
                                      nn.Conv2d(cls_hidden, num_classes, 1))
                        for c in in_channels]
        self.cv2 = nn.ModuleList(box_branches)
        self.cv3 = nn.ModuleList(cls_branches)
        # ultralytics' prior: box bins start equal (bias 1.0); about 5 objects per image over nc
        # classes and the level's cells: cls bias = log(5 / nc / cells).
        height, width = input_size
        for box_branch, cls_branch, stride in zip(box_branches, cls_branches, strides):
            nn.init.constant_(conv_bias(box_branch[-1]), 1.0)
            cells = (height / stride) * (width / stride)
            nn.init.constant_(conv_bias(cls_branch[-1]), math.log(5.0 / num_classes / cells))

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.cat((box(x), cls(x)), dim=1) for box, cls, x in zip(self.cv2, self.cv3, features))


class YOLOv8(DetectorModel):
    """YOLOv8 detector. Input float32 [B, 3, H, W]; output a tuple of three [B, 4 * reg_max + nc, H/s, W/s]."""

    def __init__(self, num_classes: int, input_size: tuple[int, int] = (160, 160), width: float = 0.25,
                 depth: float = 0.33, reg_max: int = DEFAULT_REG_MAX, max_channels: int = 384) -> None:
        super().__init__()
        self.strides = STRIDES
        self.reg_max = reg_max

        def ch(channels: int) -> int:
            return scale_channels(min(channels, max_channels), width)

        def n(repeats: int) -> int:
            return scale_depth(repeats, depth)

        # backbone
        self.stem = ConvBNAct(3, ch(64), 3, 2)                                                              # P1/2
        self.stage2 = nn.Sequential(ConvBNAct(ch(64), ch(128), 3, 2), C2f(ch(128), ch(128), n(3), shortcut=True))    # P2/4
        self.stage3 = nn.Sequential(ConvBNAct(ch(128), ch(256), 3, 2), C2f(ch(256), ch(256), n(6), shortcut=True))   # P3/8
        self.stage4 = nn.Sequential(ConvBNAct(ch(256), ch(512), 3, 2), C2f(ch(512), ch(512), n(6), shortcut=True))   # P4/16
        self.stage5 = nn.Sequential(ConvBNAct(ch(512), ch(1024), 3, 2), C2f(ch(1024), ch(1024), n(3), shortcut=True),
                                    SPPF(ch(1024), ch(1024), 5))                                                     # P5/32
        # PAN neck (no lateral 1x1 convs in v8)
        self.upsample = upsample2x()
        self.top_down_p4 = C2f(ch(1024) + ch(512), ch(512), n(3))
        self.top_down_p3 = C2f(ch(512) + ch(256), ch(256), n(3))              # out P3
        self.down_p3 = ConvBNAct(ch(256), ch(256), 3, 2)
        self.bottom_up_p4 = C2f(ch(256) + ch(512), ch(512), n(3))             # out P4
        self.down_p4 = ConvBNAct(ch(512), ch(512), 3, 2)
        self.bottom_up_p5 = C2f(ch(512) + ch(1024), ch(1024), n(3))           # out P5
        self.detect = DFLDetect(num_classes, (ch(256), ch(512), ch(1024)), reg_max, STRIDES, input_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        mid4 = self.top_down_p4(torch.cat((self.upsample(p5), p4), dim=1))
        out3 = self.top_down_p3(torch.cat((self.upsample(mid4), p3), dim=1))
        out4 = self.bottom_up_p4(torch.cat((self.down_p3(out3), mid4), dim=1))
        out5 = self.bottom_up_p5(torch.cat((self.down_p4(out4), p5), dim=1))
        return self.detect((out3, out4, out5))


def build_from_config(config: ModelConfig, class_names: Sequence[str] | None = None,
                      reg_max: int = DEFAULT_REG_MAX) -> YOLOv8:
    """YOLOv8 for ``config`` with ``.spec`` (head kind ``dfl``) and ``.config`` attached."""
    model = YOLOv8(config.num_classes, config.input_size, config.width, config.depth, reg_max=reg_max)
    head = HeadSpec(kind="dfl", output_names=OUTPUT_NAMES, params={"strides": list(STRIDES), "reg_max": reg_max})
    model.spec = detector_spec(config, class_names, head)
    model.config = config
    return model
