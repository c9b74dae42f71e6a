"""SSD with a MobileNetV1 backbone (MobileNet-SSD): depthwise-separable convs, one extra stage, and
3x3 conv heads on four feature maps (strides 8, 16, 32, 64). With ``top_down`` (the default) the
three finer maps first pass through an FPN top-down path (SSD-FPN), so the stride-8 head that finds
small objects also sees the context of the deeper stages.

Head kind ``ssd``: two raw tensors, ``loc [B, P, 4]`` (encoded offsets) and ``conf [B, P, 1 + nc]``
(logits, class 0 = background). P runs over levels, then cells in row-major order, then the priors
of a cell, which is the order of ``permute(0, 2, 3, 1).reshape(B, -1, k)`` of a head conv output.

Priors per cell (the ssd.pytorch PriorBox convention the decoder follows): a square of side
``min_size``, a square of side ``sqrt(min_size * max_size)``, and for each aspect ratio r of the level
the two boxes ``(min_size * sqrt(r), min_size / sqrt(r))`` and its transpose, i.e.
``2 + 2 * len(aspect_ratios[level])`` priors per cell. Prior centres are ``(j + 0.5) * step`` in
input pixels with ``step`` the level's stride; sizes are in input pixels.

Feature-map sizes follow from the input size: every stride-2 conv (3x3, padding 1) maps a side n to
ceil(n / 2), so a level of stride s has side ``ceil(H / s)`` (exact division up to stride 32).
Inputs are stretched to the network size and normalised with the ImageNet mean/std.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from edgekit.models import ModelConfig, detector_spec
from edgekit.models.base import DetectorModel
from edgekit.models.common import ConvBNAct, DepthwiseSeparable, scale_channels, scale_depth
from edgekit.spec import HeadSpec, Normalization, ResizeSpec

STRIDES = (8, 16, 32, 64)
ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2,))
# Prior sizes as fractions of max(H, W): level k uses min = SCALES[k], max = SCALES[k + 1].
# Smaller than SSD300's (0.1, 0.25, 0.45, 0.7, 0.95): on the synthetic set at 256 px these reach 88 %
# of the boxes at IoU >= 0.5 against 70 % (benchmarks/ssd_prior_coverage.py, benchmarks/RESULTS.md).
PRIOR_SCALES = (0.05, 0.15, 0.3, 0.5, 0.75)
VARIANCES = (0.1, 0.2)
OUTPUT_NAMES = ("loc", "conf")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def feature_map_sizes(input_size: tuple[int, int], strides: Sequence[int] = STRIDES) -> list[list[int]]:
    """[[H_k, W_k]] per level: each halving is ceil(n / 2) (3x3 stride-2 convs with padding 1)."""
    sizes = []
    for stride in strides:
        h, w = input_size
        for _ in range(int(math.log2(stride))):
            h, w = -(-h // 2), -(-w // 2)
        sizes.append([h, w])
    return sizes


def priors_per_cell(aspect_ratios: Sequence[Sequence[float]]) -> list[int]:
    """2 + 2 * len(ratios) per level: min square, sqrt(min * max) square, each ratio and its inverse."""
    return [2 + 2 * len(ratios) for ratios in aspect_ratios]


def prior_params(input_size: tuple[int, int]) -> dict:
    """The ``ssd`` head params for ``input_size`` (JSON-ready lists)."""
    side = max(input_size)
    return {
        "feature_maps": feature_map_sizes(input_size),
        "steps": list(STRIDES),
        "min_sizes": [round(s * side, 2) for s in PRIOR_SCALES[:-1]],
        "max_sizes": [round(s * side, 2) for s in PRIOR_SCALES[1:]],
        "aspect_ratios": [list(r) for r in ASPECT_RATIOS],
        "variances": list(VARIANCES),
        "clip": True,
    }


def num_priors(params: dict) -> int:
    """P: sum over levels of H_k * W_k * priors_per_cell."""
    per_cell = priors_per_cell(params["aspect_ratios"])
    return sum(h * w * k for (h, w), k in zip(params["feature_maps"], per_cell))


class SSD(DetectorModel):
    """MobileNet-SSD. Input float32 [B, 3, H, W]; output (loc [B, P, 4], conf [B, P, 1 + nc])."""

    def __init__(self, num_classes: int, width: float = 0.25, depth: float = 0.33, top_down: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = STRIDES

        def ch(channels: int) -> int:
            return scale_channels(channels, width)

        # MobileNetV1 (a 3x3/2 conv, then depthwise-separable blocks); its five 512-channel blocks scale with depth.
        self.stem = ConvBNAct(3, ch(32), 3, 2, act="relu")                                  # /2
        self.stage2 = nn.Sequential(DepthwiseSeparable(ch(32), ch(64), 1), DepthwiseSeparable(ch(64), ch(128), 2),
                                    DepthwiseSeparable(ch(128), ch(128), 1))                   # /4
        self.stage3 = nn.Sequential(DepthwiseSeparable(ch(128), ch(256), 2),
                                    DepthwiseSeparable(ch(256), ch(256), 1))                   # /8  -> level 0
        self.stage4 = nn.Sequential(DepthwiseSeparable(ch(256), ch(512), 2),                      # /16 -> level 1
                                    *(DepthwiseSeparable(ch(512), ch(512), 1) for _ in range(scale_depth(5, depth))))
        self.stage5 = nn.Sequential(DepthwiseSeparable(ch(512), ch(1024), 2),
                                    DepthwiseSeparable(ch(1024), ch(1024), 1))                 # /32 -> level 2
        # SSD extra layer: 1x1 reduce, 3x3 stride-2 expand.
        self.extra1 = nn.Sequential(ConvBNAct(ch(1024), ch(256), 1, act="relu"),
                                    ConvBNAct(ch(256), ch(512), 3, 2, act="relu"))             # /64 -> level 3
        level_channels = (ch(256), ch(512), ch(1024), ch(512))
        # Top-down path (FPN, as in SSD-FPN / SSDLite-FPN): each of levels 0-2 gets a 1x1 lateral
        # projection to a common width plus the 2x nearest upsample of the level above, then a 3x3
        # depthwise-separable smoothing block. Without it the stride-8 level, which has to find the
        # small objects, sees only six layers of context; at width 0.25 that is 64 channels of edges.
        self.top_down = top_down
        if top_down:
            fpn = ch(256)
            self.laterals = nn.ModuleList(ConvBNAct(c, fpn, 1, act="relu") for c in level_channels[:3])
            self.smooth = nn.ModuleList(DepthwiseSeparable(fpn, fpn, 1) for _ in range(3))
            self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
            level_channels = (fpn, fpn, fpn, level_channels[3])
        anchors = priors_per_cell(ASPECT_RATIOS)
        self.loc_heads = nn.ModuleList(nn.Conv2d(c, k * 4, 3, padding=1) for c, k in zip(level_channels, anchors))
        self.conf_heads = nn.ModuleList(nn.Conv2d(c, k * (1 + num_classes), 3, padding=1)
                                        for c, k in zip(level_channels, anchors))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = self.stage3(self.stage2(self.stem(x)))
        f16 = self.stage4(f8)
        f32 = self.stage5(f16)
        f64 = self.extra1(f32)
        if self.top_down:
            # Input sides are multiples of 32, so levels 0-2 are exactly 2x apart and a 2x upsample fits.
            p32 = self.laterals[2](f32)
            p16 = self.laterals[1](f16) + self.upsample(p32)
            p8 = self.laterals[0](f8) + self.upsample(p16)
            f8, f16, f32 = self.smooth[0](p8), self.smooth[1](p16), self.smooth[2](p32)
        batch = x.shape[0]
        # [B, k*4, H, W] -> [B, H, W, k*4] -> [B, H*W*k, 4]: cells row-major, then the cell's priors.
        loc = torch.cat([head(f).permute(0, 2, 3, 1).reshape(batch, -1, 4)
                         for head, f in zip(self.loc_heads, (f8, f16, f32, f64))], dim=1)
        conf = torch.cat([head(f).permute(0, 2, 3, 1).reshape(batch, -1, 1 + self.num_classes)
                          for head, f in zip(self.conf_heads, (f8, f16, f32, f64))], dim=1)
        return loc, conf


def build_from_config(config: ModelConfig, class_names: Sequence[str] | None = None) -> SSD:
    """SSD for ``config`` with ``.spec`` (head kind ``ssd``) and ``.config`` attached."""
    model = SSD(config.num_classes, config.width, config.depth)
    head = HeadSpec(kind="ssd", output_names=OUTPUT_NAMES, params=prior_params(config.input_size))
    model.spec = detector_spec(
        config, class_names, head,
        normalization=Normalization(scale=1.0 / 255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        resize=ResizeSpec(mode="resize", pad_value=114),
    )
    model.config = config
    return model
