"""YOLOX: CSPDarknet backbone (Focus stem, SPP), PAFPN neck and the decoupled, anchor-free head.

Head kind ``yolox``: one raw tensor per level (strides 8, 16, 32) of shape ``[B, 4 + 1 + nc, H / s, W / s]``
= concat(reg [4], obj logit [1], cls logits [nc]). Decoding (edgekit.runtime.decode):
``xy = (reg_xy + grid) * s``, ``wh = exp(reg_wh) * s``, ``score = sig(obj) * sig(cls)``.

Layout follows the official YOLOX code with plain 3x3 convs, as in YOLOX-S/M/L/X (the models people
deploy), scaled by width / depth. ``depthwise=True`` gives the YOLOX-Nano layout (3x3 convs replaced
by depthwise-separable ones); it is not the default because on this repository's short CPU training
schedule the depthwise net learns ~4x slower per iteration (mAP 0.03 vs 0.14 for yolov8 after
560 iterations, benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from edgekit.models import ModelConfig, detector_spec
from edgekit.models.base import DetectorModel
from edgekit.models.common import (
    C3,
    SPP,
    ConvBNAct,
    Focus,
    conv_or_depthwise,
    prior_bias,
    scale_channels,
    scale_depth,
    upsample2x,
)
from edgekit.spec import HeadSpec

STRIDES = (8, 16, 32)
OUTPUT_NAMES = ("p3", "p4", "p5")


class YOLOXHead(nn.Module):
    """Decoupled head per level: ``stems`` (1x1), then a cls branch (2 convs -> nc) and a reg branch
    (2 convs -> reg 4 and obj 1). Output per level ``cat(reg, obj, cls)``: [B, 5 + nc, H_i, W_i]."""

    def __init__(self, num_classes: int, in_channels: Sequence[int], hidden: int, depthwise: bool) -> None:
        super().__init__()
        self.stems = nn.ModuleList(ConvBNAct(c, hidden, 1) for c in in_channels)
        self.cls_convs = nn.ModuleList(
            nn.Sequential(conv_or_depthwise(hidden, hidden, 3, 1, depthwise), conv_or_depthwise(hidden, hidden, 3, 1, depthwise))
            for _ in in_channels)
        self.reg_convs = nn.ModuleList(
            nn.Sequential(conv_or_depthwise(hidden, hidden, 3, 1, depthwise), conv_or_depthwise(hidden, hidden, 3, 1, depthwise))
            for _ in in_channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(hidden, num_classes, 1) for _ in in_channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(hidden, 4, 1) for _ in in_channels)
        self.obj_preds = nn.ModuleList(nn.Conv2d(hidden, 1, 1) for _ in in_channels)
        # YOLOX's prior: objectness and class probability 0.01 at start (focal-loss style init).
        for conv in (*self.cls_preds, *self.obj_preds):
            nn.init.constant_(conv.bias, prior_bias(0.01))

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return decoupled_head_forward(self, features)


class DecoupledHead(Protocol):
    """What ``decoupled_head_forward`` reads: one ModuleList entry per level in each of these."""

    stems: nn.ModuleList
    cls_convs: nn.ModuleList
    reg_convs: nn.ModuleList
    reg_preds: nn.ModuleList
    obj_preds: nn.ModuleList
    cls_preds: nn.ModuleList


def decoupled_head_forward(head: DecoupledHead, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """YOLOX's decoupled head, shared by edgekit's YOLOX and the official-layout import: per level a 1x1 stem, a cls
    and a reg conv branch, and ``cat(reg [4], obj logit [1], cls logits [nc])`` -> [B, 5 + nc, H_i, W_i].
    ``head`` has the ModuleLists ``stems``, ``cls_convs``, ``reg_convs``, ``reg_preds``, ``obj_preds``, ``cls_preds``."""
    outputs = []
    for i, x in enumerate(features):
        x = head.stems[i](x)
        cls_feature = head.cls_convs[i](x)
        reg_feature = head.reg_convs[i](x)
        outputs.append(torch.cat((head.reg_preds[i](reg_feature), head.obj_preds[i](reg_feature),
                                  head.cls_preds[i](cls_feature)), dim=1))
    return tuple(outputs)


class YOLOX(DetectorModel):
    """YOLOX detector. Input float32 [B, 3, H, W]; output a tuple of three [B, 5 + nc, H/s, W/s] tensors."""

    def __init__(self, num_classes: int, width: float = 0.25, depth: float = 0.33, depthwise: bool = False) -> None:
        super().__init__()
        self.strides = STRIDES
        base = scale_channels(64, width)
        base_depth = scale_depth(3, depth)
        dw = depthwise

        def ch(multiple: int) -> int:
            return base * multiple

        # CSPDarknet: stem + dark2..dark5 (SPP before the last CSP layer, as in YOLOX)
        self.stem = Focus(3, base, kernel_size=3)
        self.dark2 = nn.Sequential(conv_or_depthwise(ch(1), ch(2), 3, 2, dw), C3(ch(2), ch(2), base_depth, depthwise=dw))
        self.dark3 = nn.Sequential(conv_or_depthwise(ch(2), ch(4), 3, 2, dw), C3(ch(4), ch(4), 3 * base_depth, depthwise=dw))
        self.dark4 = nn.Sequential(conv_or_depthwise(ch(4), ch(8), 3, 2, dw), C3(ch(8), ch(8), 3 * base_depth, depthwise=dw))
        self.dark5 = nn.Sequential(conv_or_depthwise(ch(8), ch(16), 3, 2, dw), SPP(ch(16), ch(16), (5, 9, 13)),
                                   C3(ch(16), ch(16), base_depth, shortcut=False, depthwise=dw))
        # PAFPN
        self.upsample = upsample2x()
        self.lateral_conv0 = ConvBNAct(ch(16), ch(8), 1)
        self.C3_p4 = C3(ch(16), ch(8), base_depth, shortcut=False, depthwise=dw)
        self.reduce_conv1 = ConvBNAct(ch(8), ch(4), 1)
        self.C3_p3 = C3(ch(8), ch(4), base_depth, shortcut=False, depthwise=dw)
        self.bu_conv2 = conv_or_depthwise(ch(4), ch(4), 3, 2, dw)
        self.C3_n3 = C3(ch(8), ch(8), base_depth, shortcut=False, depthwise=dw)
        self.bu_conv1 = conv_or_depthwise(ch(8), ch(8), 3, 2, dw)
        self.C3_n4 = C3(ch(16), ch(16), base_depth, shortcut=False, depthwise=dw)
        self.head = YOLOXHead(num_classes, (ch(4), ch(8), ch(16)), scale_channels(256, width), dw)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x3 = self.dark3(self.dark2(self.stem(x)))
        x4 = self.dark4(x3)
        x5 = self.dark5(x4)
        fpn_out0 = self.lateral_conv0(x5)
        f_out0 = self.C3_p4(torch.cat((self.upsample(fpn_out0), x4), dim=1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.C3_p3(torch.cat((self.upsample(fpn_out1), x3), dim=1))
        pan_out1 = self.C3_n3(torch.cat((self.bu_conv2(pan_out2), fpn_out1), dim=1))
        pan_out0 = self.C3_n4(torch.cat((self.bu_conv1(pan_out1), fpn_out0), dim=1))
        return self.head((pan_out2, pan_out1, pan_out0))


def build_from_config(config: ModelConfig, class_names: Sequence[str] | None = None) -> YOLOX:
    """YOLOX for ``config`` with ``.spec`` (head kind ``yolox``) and ``.config`` attached."""
    model = YOLOX(config.num_classes, config.width, config.depth)
    head = HeadSpec(kind="yolox", output_names=OUTPUT_NAMES, params={"strides": list(STRIDES)})
    model.spec = detector_spec(config, class_names, head)
    model.config = config
    return model
