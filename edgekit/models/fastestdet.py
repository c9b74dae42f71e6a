"""FastestDet: a 0.24 M-parameter anchor-free detector (ShuffleNetV2 backbone, one stride-16 head).

A re-implementation of github.com/dog-qiuqiu/FastestDet (BSD 3-Clause) whose module names match
the upstream ``state_dict`` exactly, so the authors' COCO checkpoint loads with ``strict=True``
and reproduces their ONNX export to float32 precision.

Data flow for a ``[B, 3, H, W]`` input (H, W multiples of 32; 352 x 352 upstream):

    first_conv  3x3 s2 conv+BN+ReLU, 3x3 s2 max-pool      -> [B,  24, H/4,  W/4]
    stage2      4 ShuffleNetV2 units (first has stride 2) -> P1 [B,  48, H/8,  W/8]
    stage3      8 units                                   -> P2 [B,  96, H/16, W/16]
    stage4      4 units                                   -> P3 [B, 192, H/32, W/32]
    neck        concat(avgpool3x3s2(P1), P2, upsample2x(P3)) -> [B, 336, H/16, W/16]
    SPP         336 -> 96, three depthwise 5x5 towers (receptive fields 5, 9, 13), residual
    detect_head 96 -> concat(sigmoid(obj), raw reg x4, softmax(cls)) -> [B, 5+nc, H/16, W/16]

The output is the ``fastestdet`` raw contract of :mod:`edgekit.spec`; decoding (per cell gx, gy of
the W x H grid): ``cx = (tanh(reg0) + gx) / W``, ``cy = (tanh(reg1) + gy) / H``,
``w = sigmoid(reg2)``, ``h = sigmoid(reg3)`` (normalised to the input), score
``obj^0.6 * max(cls)^0.4``. Pre-processing: BGR, plain resize (no letterbox), pixel / 255.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from edgekit.errors import InputError, SpecError
from edgekit.models.base import DetectorModel
from edgekit.spec import HeadSpec, ModelSpec, Normalization, PostprocessSpec, ResizeSpec

FAMILY = "fastestdet"
# Upstream configuration: ShuffleNetV2 units per stage and output widths (stem, stage2..4).
STAGE_REPEATS = (4, 8, 4)
STEM_CHANNELS = 24
STAGE_CHANNELS = (48, 96, 192)
NECK_CHANNELS = 96
# The deepest feature map is stride 32 and is upsampled x2 to meet the stride-16 one,
# so the input sides must be multiples of 32 for the three maps to line up.
INPUT_MULTIPLE = 32
OUTPUT_STRIDE = 16


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, depthwise: bool = False) -> list[nn.Module]:
    """[conv (no bias, 'same' padding), BN] — the layer pair every FastestDet block is made of."""
    groups = in_channels if depthwise else 1
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


def _channel_halves(x: Tensor) -> tuple[Tensor, Tensor]:
    """Split channels into (even-indexed, odd-indexed) halves: ``x[:, 0::2]``, ``x[:, 1::2]``.

    Written as upstream writes it — reshape to (B*C/2, 2, HW), swap the first two axes, reshape to
    (2, B, C/2, H, W) — because exporters and converters recognise this pattern as a channel
    shuffle (NCNN: ShuffleChannel + Slice) rather than two strided slices.
    """
    batch, channels, height, width = x.shape
    pairs = x.reshape(batch * channels // 2, 2, height * width).permute(1, 0, 2)
    halves = pairs.reshape(2, -1, channels // 2, height, width)
    return halves[0], halves[1]


class ShuffleV2Block(nn.Module):
    """One ShuffleNetV2 unit.

    Stride 2 (first unit of a stage): ``concat(branch_proj(x), branch_main(x))`` where
    ``branch_proj`` (dw 3x3 s2 + BN, 1x1 + BN + ReLU) keeps the ``in_channels`` width and
    ``branch_main`` produces ``out_channels - in_channels``; spatial size halves.

    Stride 1: the input's even channels pass through untouched and its odd channels go through
    ``branch_main``: ``concat(x[:, 0::2], branch_main(x[:, 1::2]))``. Here ``in_channels`` is the
    width of the half that enters ``branch_main`` (out_channels / 2).
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleV2Block stride must be 1 or 2, got {stride}")
        self.stride = stride
        branch_out = out_channels - in_channels
        # Indices 0..7 must stay as they are: they are the state_dict keys (branch_main.{0,1,3,4,5,6}).
        self.branch_main = nn.Sequential(
            *_conv_bn(in_channels, mid_channels, 1), nn.ReLU(),
            *_conv_bn(mid_channels, mid_channels, 3, stride, depthwise=True),
            *_conv_bn(mid_channels, branch_out, 1), nn.ReLU(),
        )
        if stride == 2:
            self.branch_proj = nn.Sequential(
                *_conv_bn(in_channels, in_channels, 3, stride, depthwise=True),
                *_conv_bn(in_channels, in_channels, 1), nn.ReLU(),
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 2:
            return torch.cat((self.branch_proj(x), self.branch_main(x)), dim=1)
        passthrough, processed = _channel_halves(x)
        return torch.cat((passthrough, self.branch_main(processed)), dim=1)


class ShuffleNetV2Backbone(nn.Module):
    """ShuffleNetV2 trunk returning (P1, P2, P3) at strides 8, 16, 32 with 48, 96, 192 channels."""

    def __init__(self, stage_repeats: Sequence[int] = STAGE_REPEATS,
                 stage_channels: Sequence[int] = STAGE_CHANNELS, stem_channels: int = STEM_CHANNELS) -> None:
        super().__init__()
        self.first_conv = nn.Sequential(*_conv_bn(3, stem_channels, 3, stride=2), nn.ReLU())
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = stem_channels
        stages = []
        for repeats, out_channels in zip(stage_repeats, stage_channels):
            units = [ShuffleV2Block(in_channels, out_channels, out_channels // 2, stride=2)]
            units += [ShuffleV2Block(out_channels // 2, out_channels, out_channels // 2, stride=1)
                      for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            in_channels = out_channels
        self.stage2, self.stage3, self.stage4 = stages

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.maxpool(self.first_conv(x))
        p1 = self.stage2(x)
        p2 = self.stage3(p1)
        p3 = self.stage4(p2)
        return p1, p2, p3


class Conv1x1(nn.Module):
    """1x1 conv + BN + ReLU (module attribute ``conv1x1`` mirrors the upstream key names)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Sequential(*_conv_bn(in_channels, out_channels, 1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv1x1(x)


class FastestDetSPP(nn.Module):
    """SPP-like neck: y = ReLU(x + BN(conv1x1(concat(S1(x), S2(x), S3(x))))), x = Conv1x1(input).

    S1, S2, S3 stack one, two and three (depthwise 5x5 + BN + ReLU), i.e. receptive fields
    5, 9 and 13 — the depthwise stand-in for SPP's 5/9/13 max-pools.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.Conv1x1 = Conv1x1(in_channels, out_channels)  # upstream key name
        self.S1 = self._tower(out_channels, 1)
        self.S2 = self._tower(out_channels, 2)
        self.S3 = self._tower(out_channels, 3)
        self.output = nn.Sequential(*_conv_bn(3 * out_channels, out_channels, 1))
        self.relu = nn.ReLU()

    @staticmethod
    def _tower(channels: int, depth: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [*_conv_bn(channels, channels, 5, depthwise=True), nn.ReLU()]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.Conv1x1(x)
        towers = torch.cat((self.S1(x), self.S2(x), self.S3(x)), dim=1)
        return self.relu(x + self.output(towers))


class HeadBranch(nn.Module):
    """Depthwise 5x5 + BN + ReLU, then 1x1 conv + BN to ``out_channels`` (attribute ``conv5x5``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv5x5 = nn.Sequential(
            *_conv_bn(in_channels, in_channels, 5, depthwise=True), nn.ReLU(),
            *_conv_bn(in_channels, out_channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv5x5(x)


class DetectHead(nn.Module):
    """[B, C, h, w] -> [B, 5+nc, h, w] = concat(sigmoid(obj), raw reg x4, softmax over classes)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1x1 = Conv1x1(in_channels, in_channels)
        self.obj_layers = HeadBranch(in_channels, 1)
        self.reg_layers = HeadBranch(in_channels, 4)
        self.cls_layers = HeadBranch(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1x1(x)
        objectness = torch.sigmoid(self.obj_layers(x))
        regression = self.reg_layers(x)
        class_probs = torch.softmax(self.cls_layers(x), dim=1)
        return torch.cat((objectness, regression, class_probs), dim=1)


class FastestDet(DetectorModel):
    """FastestDet detector: float32 ``[B, 3, H, W]`` (BGR / 255) -> float32 ``[B, 5+nc, H/16, W/16]``.

    Output channels: 0 = objectness probability (sigmoid), 1..4 = raw box regression
    (decoded with tanh for the centre offset and sigmoid for the size), 5.. = class
    probabilities (softmax over channels, so they sum to 1 per cell). H and W must be
    multiples of 32.
    """

    def __init__(self, num_classes: int = 80) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = ShuffleNetV2Backbone()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        # count_include_pad=True (the default) matches upstream: its ONNX pads with zeros, then averages 9 values.
        self.avg_pool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        self.SPP = FastestDetSPP(sum(STAGE_CHANNELS), NECK_CHANNELS)  # upstream key name
        self.detect_head = DetectHead(NECK_CHANNELS, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if not _is_exporting():
            _check_input(x)
        p1, p2, p3 = self.backbone(x)
        # Bring the stride-8 and stride-32 maps to stride 16 and stack all three.
        neck = torch.cat((self.avg_pool(p1), p2, self.upsample(p3)), dim=1)
        return self.detect_head(self.SPP(neck))


def _is_exporting() -> bool:
    """True while tracing/exporting, where a Python-side shape check would be baked in or break dynamic shapes."""
    compiler = torch.compiler
    return bool(
        torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or compiler.is_compiling()
        or (hasattr(compiler, "is_exporting") and compiler.is_exporting())
    )


def _check_input(x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise InputError(f"FastestDet expects a float tensor [B, 3, H, W], got shape {tuple(x.shape)}")
    height, width = int(x.shape[2]), int(x.shape[3])
    if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        raise InputError(
            f"FastestDet input height and width must be multiples of {INPUT_MULTIPLE}, got {height}x{width} "
            f"(e.g. resize to 352x352)"
        )


def build_fastestdet(num_classes: int = 80) -> FastestDet:
    """A randomly initialised FastestDet with ``num_classes`` output classes (80 for COCO), in eval mode."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise SpecError(f"FastestDet num_classes must be a positive integer, got {num_classes!r}")
    return FastestDet(num_classes).eval()


def fastestdet_spec(class_names: Sequence[str], input_size: tuple[int, int] = (352, 352)) -> ModelSpec:
    """The ModelSpec of a FastestDet export: BGR, plain resize, pixel/255, one output ``output``.

    ``input_size`` is (height, width), each a multiple of 32. Postprocess defaults follow upstream:
    score threshold 0.25, class-aware NMS at IoU 0.45.
    """
    height, width = (int(side) for side in input_size)
    if height <= 0 or width <= 0 or height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        raise SpecError(
            f"FastestDet input_size must be positive multiples of {INPUT_MULTIPLE} (height, width), got {tuple(input_size)!r}"
        )
    return ModelSpec(
        family=FAMILY,
        input_size=(height, width),
        class_names=tuple(str(name) for name in class_names),
        head=HeadSpec(kind="fastestdet", output_names=("output",), params={}),
        color_order="BGR",
        normalization=Normalization(scale=1.0 / 255.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        resize=ResizeSpec(mode="resize"),
        postprocess=PostprocessSpec(conf_threshold=0.25, iou_threshold=0.45, nms=True, class_agnostic=False),
    )


#: upstream trains and exports FastestDet at 352x352
DEFAULT_INPUT_SIZE = (352, 352)


def build_from_config(config, class_names: Sequence[str] | None = None) -> FastestDet:
    """Registry entry (edgekit.models.FAMILIES): FastestDet has one fixed width, so only
    ``num_classes`` and ``input_size`` of the ModelConfig apply."""
    names = tuple(class_names) if class_names else tuple(f"class{i}" for i in range(config.num_classes))
    model = build_fastestdet(config.num_classes)
    model.spec = fastestdet_spec(names, tuple(config.input_size))
    model.config = config
    return model
