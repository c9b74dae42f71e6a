"""CenterNet ("Objects as Points") with a small ResNet backbone and transposed-conv upsampling.

Head kind ``centernet`` (params ``stride`` 4, ``topk`` 100; no NMS): three raw tensors on the
stride-4 grid,

- ``heatmap [B, nc, H/4, W/4]``: class-centre logits (bias initialised to -2.19, i.e. p = 0.1),
- ``wh      [B, 2,  H/4, W/4]``: box width and height in output-grid units,
- ``offset  [B, 2,  H/4, W/4]``: sub-cell centre offset in output-grid units.

Decoding (edgekit.runtime.decode) keeps heatmap peaks (3x3 max-pool suppression), top-k.

Backbone: ResNet-18 layout (7x7/2 stem, max-pool, four stages of BasicBlocks, strides 4..32) scaled by
``width`` / ``depth``; then three ConvTranspose2d(4, 2, 1) + BN + ReLU stages back to stride 4, as in
CenterNet's ResNet variant (whose transposed convs are the targets of BN-into-ConvTranspose folding).
With ``skip_connections`` (the default) each upsampling stage also adds a 1x1 conv + BN projection of
the backbone stage at its stride (strides 16, 8, 4), as TTFNet and the mobile CenterNet variants do:
without them every object, down to 6-pixel ones, has to pass through the 5x5 stride-32 map of a
160-pixel input, and the fixture reached only mAP 0.10 in the schedule the YOLO heads need.
Inputs are normalised with the ImageNet mean/std, CenterNet's convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgekit.models import ModelConfig, detector_spec
from edgekit.models.base import DetectorModel
from edgekit.models.common import BasicBlock, ConvBNAct, ConvTransposeBNAct, conv_bias, scale_channels, scale_depth
from edgekit.spec import HeadSpec, Normalization, PostprocessSpec, ResizeSpec

STRIDE = 4
TOPK = 100
OUTPUT_NAMES = ("heatmap", "wh", "offset")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# -log((1 - 0.1) / 0.1): CenterNet starts every heatmap cell at probability ~0.1.
HEATMAP_BIAS = -2.19


def _head(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    """CenterNet head: 3x3 conv (with bias, no BN) -> ReLU -> 1x1 conv."""
    return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, c_out, 1))


class CenterNet(DetectorModel):
    """CenterNet detector. Input float32 [B, 3, H, W]; output (heatmap, wh, offset) at stride 4."""

    def __init__(self, num_classes: int, width: float = 0.25, depth: float = 0.33,
                 skip_connections: bool = True) -> None:
        super().__init__()
        self.stride = STRIDE
        stage_channels = [scale_channels(c, width) for c in (64, 128, 256, 512)]
        blocks = scale_depth(2, depth)  # ResNet-18: 2 BasicBlocks per stage
        # CenterNet-ResNet's deconv widths are (256, 128, 64); the last is widened to 128 here so the
        # stride-4 features (and the heads) keep 32 channels at width 0.25.
        deconv_channels = [scale_channels(c, width) for c in (256, 128, 128)]
        head_channels = deconv_channels[-1]

        self.stem = nn.Sequential(ConvBNAct(3, stage_channels[0], 7, 2, act="relu"), nn.MaxPool2d(3, 2, 1))   # /4
        layers = []
        c_in = stage_channels[0]
        for i, c_out in enumerate(stage_channels):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(*(BasicBlock(c_in if b == 0 else c_out, c_out, stride if b == 0 else 1)
                                          for b in range(blocks))))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = layers                                          # /4../32
        upsampling = []
        for c_out in deconv_channels:
            upsampling.append(ConvTransposeBNAct(c_in, c_out, 4, 2, 1))
            c_in = c_out
        self.deconv_layers = nn.Sequential(*upsampling)                                                    # /32 -> /4
        # Backbone stages at strides 16, 8, 4, projected onto the matching upsampling stage's width.
        self.skip_layers = nn.ModuleList(
            ConvBNAct(c_skip, c_up, 1, act=None)
            for c_skip, c_up in zip(reversed(stage_channels[:3]), deconv_channels)) if skip_connections else None
        self.heatmap = _head(c_in, head_channels, num_classes)
        self.wh = _head(c_in, head_channels, 2)
        self.offset = _head(c_in, head_channels, 2)
        nn.init.constant_(conv_bias(self.heatmap[-1]), HEATMAP_BIAS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c4 = self.layer1(self.stem(x))
        c8 = self.layer2(c4)
        c16 = self.layer3(c8)
        x = self.layer4(c16)
        if self.skip_layers is None:
            x = self.deconv_layers(x)
        else:
            for upsample, skip, feature in zip(self.deconv_layers, self.skip_layers, (c16, c8, c4)):
                x = upsample(x) + skip(feature)
        return self.heatmap(x), self.wh(x), self.offset(x)


def build_from_config(config: ModelConfig, class_names: Sequence[str] | None = None) -> CenterNet:
    """CenterNet for ``config`` with ``.spec`` (head kind ``centernet``) and ``.config`` attached."""
    model = CenterNet(config.num_classes, config.width, config.depth)
    head = HeadSpec(kind="centernet", output_names=OUTPUT_NAMES, params={"stride": STRIDE, "topk": TOPK})
    model.spec = detector_spec(
        config, class_names, head,
        normalization=Normalization(scale=1.0 / 255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        resize=ResizeSpec(mode="letterbox", pad_value=0),
        postprocess=PostprocessSpec(conf_threshold=0.25, nms=False, pre_nms_topk=TOPK, max_detections=TOPK),
    )
    model.config = config
    return model
