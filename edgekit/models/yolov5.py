"""YOLOv5 (v5.0 layout): Focus stem, C3 CSP blocks, SPP(5, 9, 13), PAN neck, anchor-based head.

Head kind ``yolo_anchor``: one raw tensor per level (strides 8, 16, 32) of shape
``[B, na * (5 + nc), H / s, W / s]``, channels ordered (anchor, [x, y, w, h, obj, cls...]).
Decoding (in edgekit.runtime.decode, not here): ``xy = (2 sig(t) - 0.5 + grid) * s``,
``wh = (2 sig(t))^2 * anchor``, ``score = sig(obj) * sig(cls)``.

Layout follows yolov5s.yaml of release v5.0 with ``width`` / ``depth`` multipliers; channel counts are
capped at ``max_channels`` before scaling (as YOLOv8-l does) so the width-0.25 model stays ~1 M
parameters for CPU training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from edgekit.errors import SpecError
from edgekit.models import ModelConfig, detector_spec
from edgekit.models.base import DetectorModel
from edgekit.models.common import C3, SPP, ConvBNAct, Focus, conv_bias, scale_channels, scale_depth, upsample2x
from edgekit.spec import HeadSpec

STRIDES = (8, 16, 32)
# The canonical YOLOv5 P3/P4/P5 anchors (w, h) in pixels of a 640 input.
ANCHORS_640 = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
OUTPUT_NAMES = ("p3", "p4", "p5")


def default_anchors(input_size: tuple[int, int]) -> list[list[list[float]]]:
    """The 640-pixel anchors scaled by ``max(H, W) / 640``.

    A letterbox maps an image's long side onto the input's long side, so object sizes in input pixels
    scale with max(H, W); the anchors, being prior object sizes, scale the same way.
    """
    ratio = max(input_size) / 640.0
    return [[[round(w * ratio, 2), round(h * ratio, 2)] for w, h in level] for level in ANCHORS_640]


class YOLOv5Detect(nn.Module):
    """One 1x1 conv per level: [B, c_i, H_i, W_i] -> [B, na * (5 + nc), H_i, W_i] raw logits."""

    def __init__(self, num_classes: int, in_channels: Sequence[int], num_anchors: int,
                 strides: Sequence[int], input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.num_outputs = 5 + num_classes
        self.m = nn.ModuleList(nn.Conv2d(c, num_anchors * self.num_outputs, 1) for c in in_channels)
        self._initialize_biases(strides, input_size)

    def _initialize_biases(self, strides: Sequence[int], input_size: tuple[int, int]) -> None:
        # YOLOv5's prior: about 8 objects per image spread over the level's cells, and class
        # probability 0.6 / (nc - 0.99), so the first losses are not dominated by false positives.
        height, width = input_size
        for conv, stride in zip(self.m, strides):
            bias = conv_bias(conv).detach().view(self.num_anchors, self.num_outputs)
            cells = (height / stride) * (width / stride)
            bias[:, 4] += math.log(8.0 / cells)
            bias[:, 5:] += math.log(0.6 / (self.num_classes - 0.99)) if self.num_classes > 1 else 0.0

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(conv(x) for conv, x in zip(self.m, features))


class YOLOv5(DetectorModel):
    """YOLOv5 detector. Input float32 [B, 3, H, W] (H, W multiples of 32); output a tuple of the three
    raw level tensors (strides 8, 16, 32), see the module docstring."""

    def __init__(self, num_classes: int, input_size: tuple[int, int] = (160, 160), width: float = 0.25,
                 depth: float = 0.33, anchors: Sequence[Sequence[Sequence[float]]] | None = None,
                 max_channels: int = 512) -> None:
        super().__init__()
        anchors = default_anchors(input_size) if anchors is None else [[list(map(float, a)) for a in lv] for lv in anchors]
        if len(anchors) != len(STRIDES) or len({len(level) for level in anchors}) != 1:
            raise SpecError(f"yolov5: anchors must be {len(STRIDES)} levels with the same number of [w, h] pairs each")
        self.anchors = anchors
        self.strides = STRIDES

        def ch(channels: int) -> int:
            return scale_channels(min(channels, max_channels), width)

        def n(repeats: int) -> int:
            return scale_depth(repeats, depth)

        # backbone
        self.stem = Focus(3, ch(64), kernel_size=3)                                  # P1/2
        self.stage2 = nn.Sequential(ConvBNAct(ch(64), ch(128), 3, 2), C3(ch(128), ch(128), n(3)))   # P2/4
        self.stage3 = nn.Sequential(ConvBNAct(ch(128), ch(256), 3, 2), C3(ch(256), ch(256), n(9)))  # P3/8
        self.stage4 = nn.Sequential(ConvBNAct(ch(256), ch(512), 3, 2), C3(ch(512), ch(512), n(9)))  # P4/16
        self.stage5 = nn.Sequential(ConvBNAct(ch(512), ch(1024), 3, 2), SPP(ch(1024), ch(1024), (5, 9, 13)),
                                    C3(ch(1024), ch(1024), n(3), shortcut=False))                   # P5/32
        # PAN neck: top-down (FPN) then bottom-up
        self.upsample = upsample2x()
        self.reduce_p5 = ConvBNAct(ch(1024), ch(512), 1)
        self.top_down_p4 = C3(ch(512) + ch(512), ch(512), n(3), shortcut=False)
        self.reduce_p4 = ConvBNAct(ch(512), ch(256), 1)
        self.top_down_p3 = C3(ch(256) + ch(256), ch(256), n(3), shortcut=False)       # out P3
        self.down_p3 = ConvBNAct(ch(256), ch(256), 3, 2)
        self.bottom_up_p4 = C3(ch(256) + ch(256), ch(512), n(3), shortcut=False)      # out P4
        self.down_p4 = ConvBNAct(ch(512), ch(512), 3, 2)
        self.bottom_up_p5 = C3(ch(512) + ch(512), ch(1024), n(3), shortcut=False)     # out P5
        self.detect = YOLOv5Detect(num_classes, (ch(256), ch(512), ch(1024)), len(anchors[0]), STRIDES, input_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        lateral5 = self.reduce_p5(p5)
        lateral4 = self.reduce_p4(self.top_down_p4(torch.cat((self.upsample(lateral5), p4), dim=1)))
        out3 = self.top_down_p3(torch.cat((self.upsample(lateral4), p3), dim=1))
        out4 = self.bottom_up_p4(torch.cat((self.down_p3(out3), lateral4), dim=1))
        out5 = self.bottom_up_p5(torch.cat((self.down_p4(out4), lateral5), dim=1))
        return self.detect((out3, out4, out5))


def build_from_config(config: ModelConfig, class_names: Sequence[str] | None = None) -> YOLOv5:
    """YOLOv5 for ``config`` with ``.spec`` (head kind ``yolo_anchor``) and ``.config`` attached."""
    model = YOLOv5(config.num_classes, config.input_size, config.width, config.depth)
    head = HeadSpec(kind="yolo_anchor", output_names=OUTPUT_NAMES,
                    params={"strides": list(STRIDES), "anchors": model.anchors})
    model.spec = detector_spec(config, class_names, head)
    model.config = config
    return model
