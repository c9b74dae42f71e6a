"""YOLOv6 (3.0 layout, n/s style): EfficientRep backbone of RepVGG blocks, Rep-PAN neck, anchor-free
efficient decoupled head with distribution focal loss (DFL) box regression.

Head kind ``dfl``: one raw tensor per level (strides 8, 16, 32) of shape ``[B, 4 * reg_max + nc, H / s, W / s]``
= concat(box bins [4 * reg_max], cls logits [nc]); decoding (edgekit.runtime.decode) takes for each
side (l, t, r, b) the expectation ``sum_i softmax(bins)_i * i`` times the stride, from the anchor point
``(grid + 0.5) * s``. No objectness.

RepVGG blocks are kept in training form (three branches) for the RepVGG re-parameterisation pass.
The layout is YOLOv6-N's (channels 64..1024 and repeats 1/6/12/18/6 before the width/depth
multipliers), made lighter for CPU training in three documented ways: channel counts are capped at
``max_channels`` (256) before width scaling, the neck RepBlocks repeat 6 instead of 12 times before the
depth multiplier, and the neck upsamples with nearest-neighbour instead of a 2x2 transposed conv (which
exports and converts more uniformly). At width 0.25 / depth 0.33 that is ~1.2 M parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgekit.models import ModelConfig, detector_spec
from edgekit.models.base import DetectorModel
from edgekit.models.common import (
    SPPF,
    ConvBNAct,
    RepBlock,
    RepVGGBlock,
    conv_bias,
    prior_bias,
    scale_channels,
    scale_depth,
    upsample2x,
)
from edgekit.spec import HeadSpec

STRIDES = (8, 16, 32)
OUTPUT_NAMES = ("p3", "p4", "p5")
DEFAULT_REG_MAX = 16


class EfficientDecoupledHead(nn.Module):
    """Per level: ``stems`` (1x1), one 3x3 conv per branch, ``reg_preds`` -> 4 * reg_max bins and
    ``cls_preds`` -> nc logits; output ``cat(box, cls)``: [B, 4 * reg_max + nc, H_i, W_i]."""

    def __init__(self, num_classes: int, in_channels: Sequence[int], reg_max: int) -> None:
        super().__init__()
        self.stems = nn.ModuleList(ConvBNAct(c, c, 1) for c in in_channels)
        self.cls_convs = nn.ModuleList(ConvBNAct(c, c, 3) for c in in_channels)
        self.reg_convs = nn.ModuleList(ConvBNAct(c, c, 3) for c in in_channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in in_channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(c, 4 * reg_max, 1) for c in in_channels)
        # YOLOv6's prior: class probability 0.01; box bins start equal (bias 1.0 everywhere).
        for conv in self.cls_preds:
            nn.init.constant_(conv_bias(conv), prior_bias(0.01))
        for conv in self.reg_preds:
            nn.init.constant_(conv_bias(conv), 1.0)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        outputs = []
        for i, x in enumerate(features):
            x = self.stems[i](x)
            outputs.append(torch.cat((self.reg_preds[i](self.reg_convs[i](x)),
                                      self.cls_preds[i](self.cls_convs[i](x))), dim=1))
        return tuple(outputs)


class YOLOv6(DetectorModel):
    """YOLOv6 detector. Input float32 [B, 3, H, W]; output a tuple of three [B, 4 * reg_max + nc, H/s, W/s]."""

    def __init__(self, num_classes: int, width: float = 0.25, depth: float = 0.33, reg_max: int = DEFAULT_REG_MAX,
                 max_channels: int = 256, neck_repeats: int = 6) -> None:
        super().__init__()
        self.strides = STRIDES
        self.reg_max = reg_max

        def ch(channels: int) -> int:
            return scale_channels(min(channels, max_channels), width)

        def n(repeats: int) -> int:
            return scale_depth(repeats, depth)

        # EfficientRep: each stage is a stride-2 RepVGG block and a RepBlock; SPPF (ReLU, "SimSPPF") last.
        self.stem = RepVGGBlock(3, ch(64), stride=2)                                                        # P1/2
        self.ERBlock_2 = nn.Sequential(RepVGGBlock(ch(64), ch(128), stride=2), RepBlock(ch(128), ch(128), n(6)))   # P2/4
        self.ERBlock_3 = nn.Sequential(RepVGGBlock(ch(128), ch(256), stride=2), RepBlock(ch(256), ch(256), n(12)))  # P3/8
        self.ERBlock_4 = nn.Sequential(RepVGGBlock(ch(256), ch(512), stride=2), RepBlock(ch(512), ch(512), n(18)))  # P4/16
        self.ERBlock_5 = nn.Sequential(RepVGGBlock(ch(512), ch(1024), stride=2), RepBlock(ch(1024), ch(1024), n(6)),
                                       SPPF(ch(1024), ch(1024), 5, act="relu"))                                   # P5/32
        # Rep-PAN neck
        self.upsample = upsample2x()
        self.reduce_layer0 = ConvBNAct(ch(1024), ch(256), 1, act="relu")
        self.Rep_p4 = RepBlock(ch(512) + ch(256), ch(256), n(neck_repeats))
        self.reduce_layer1 = ConvBNAct(ch(256), ch(128), 1, act="relu")
        self.Rep_p3 = RepBlock(ch(256) + ch(128), ch(128), n(neck_repeats))                # out P3
        self.downsample2 = ConvBNAct(ch(128), ch(128), 3, 2, act="relu")
        self.Rep_n3 = RepBlock(ch(128) + ch(128), ch(256), n(neck_repeats))                # out P4
        self.downsample1 = ConvBNAct(ch(256), ch(256), 3, 2, act="relu")
        self.Rep_n4 = RepBlock(ch(256) + ch(256), ch(512), n(neck_repeats))                # out P5
        self.head = EfficientDecoupledHead(num_classes, (ch(128), ch(256), ch(512)), reg_max)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c3 = self.ERBlock_3(self.ERBlock_2(self.stem(x)))
        c4 = self.ERBlock_4(c3)
        c5 = self.ERBlock_5(c4)
        fpn_out0 = self.reduce_layer0(c5)
        f_out0 = self.Rep_p4(torch.cat((self.upsample(fpn_out0), c4), dim=1))
        fpn_out1 = self.reduce_layer1(f_out0)
        pan_out2 = self.Rep_p3(torch.cat((self.upsample(fpn_out1), c3), dim=1))
        pan_out1 = self.Rep_n3(torch.cat((self.downsample2(pan_out2), fpn_out1), dim=1))
        pan_out0 = self.Rep_n4(torch.cat((self.downsample1(pan_out1), fpn_out0), dim=1))
        return self.head((pan_out2, pan_out1, pan_out0))


def build_from_config(config: ModelConfig, class_names: Sequence[str] | None = None,
                      reg_max: int = DEFAULT_REG_MAX) -> YOLOv6:
    """YOLOv6 for ``config`` with ``.spec`` (head kind ``dfl``) and ``.config`` attached."""
    model = YOLOv6(config.num_classes, config.width, config.depth, reg_max=reg_max)
    head = HeadSpec(kind="dfl", output_names=OUTPUT_NAMES, params={"strides": list(STRIDES), "reg_max": reg_max})
    model.spec = detector_spec(config, class_names, head)
    model.config = config
    return model
