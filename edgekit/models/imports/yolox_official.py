"""Official YOLOX checkpoints (Megvii ``yolox_{nano,tiny,s,m,l,x}.pth``, Apache-2.0) without the ``yolox`` package.

A YOLOX training checkpoint is ``torch.save({"model": state_dict, "start_epoch": ..., "optimizer": ...,
"amp": ...})`` (the released files hold ``"model"`` and sometimes ``"optimizer"``); it loads with
:func:`edgekit.models.checkpoint.safe_torch_load` (``weights_only=True``). This module rebuilds the network
from the architecture with edgekit's own modules, under exactly the upstream parameter names, so that
:func:`~edgekit.models.checkpoint.load_state_dict_strict` loads the state_dict key for key:

- ``backbone.backbone.*``  CSPDarknet: ``stem`` (Focus: space-to-depth in the order top-left, bottom-left,
  top-right, bottom-right, then a 3x3 BaseConv), ``dark2``..``dark4`` = [3x3 stride-2 conv, CSPLayer],
  ``dark5`` = [3x3 stride-2 conv, SPPBottleneck (max-pools 5, 9, 13), CSPLayer without shortcut];
- ``backbone.*``  YOLOPAFPN: ``lateral_conv0``, ``C3_p4``, ``reduce_conv1``, ``C3_p3`` (top-down, nearest 2x
  upsampling), ``bu_conv2``, ``C3_n3``, ``bu_conv1``, ``C3_n4`` (bottom-up, 3x3 stride-2 convs); neck CSPLayers
  have no shortcut;
- ``head.*``  YOLOXHead per level: ``stems`` (1x1), ``cls_convs`` / ``reg_convs`` (two 3x3 convs each),
  ``cls_preds`` (nc), ``reg_preds`` (4) and ``obj_preds`` (1) 1x1 convs with bias.

BaseConv = Conv2d (no bias) -> BatchNorm2d (eps 1e-3, momentum 0.03, set by YOLOX's ``init_yolo``) -> SiLU,
i.e. :class:`edgekit.models.common.ConvBNAct`. YOLOX-Nano replaces every 3x3 conv outside the stem, the
CSP 1x1 convs and the head stems by DWConv = depthwise 3x3 BaseConv ``dconv`` + pointwise 1x1 BaseConv ``pconv``.

Nothing about the scale is assumed: the stem's output channels give the width (``64 * width``), the number
of ``m.<i>`` Bottlenecks of each CSPLayer its depth, the presence of ``dconv`` keys the depthwise layout, and
``head.cls_preds.0.weight`` the number of classes. Every other tensor must then have the shape the official
code gives it; one that does not is reported (ModelFileError, one line) with its key and both shapes.

Output (head kind ``yolox``, see :mod:`edgekit.spec`): per level (strides 8, 16, 32) a raw float32
``[B, 4 + 1 + nc, H / s, W / s]`` = cat(reg, obj logit, cls logits) — the order of YOLOXHead's own
``torch.cat([reg_output, obj_output, cls_output], 1)``, taken before its in-graph sigmoid and decoding,
which edgekit's decoders apply (``score = sigmoid(obj) * sigmoid(cls)``, as YOLOX's ``postprocess``).

Preprocessing (YOLOX ``preproc`` / ``ValTransform`` since v0.2.0): BGR pixels 0..255 as float (no /255, no
mean/std), letterbox with ``r = min(H / h, W / w)``, ``cv2.INTER_LINEAR`` resize to ``int(w * r) x int(h * r)``,
content at the top-left corner, padded right/bottom with 114.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from edgekit.errors import ModelFileError, SpecError
from edgekit.models.base import DetectorModel
from edgekit.models.checkpoint import _unwrap_state_dict, load_state_dict_strict
from edgekit.models.common import ConvBNAct, Focus, upsample2x
from edgekit.models.yolox import decoupled_head_forward
from edgekit.spec import HeadSpec, ModelSpec, Normalization, PostprocessSpec, ResizeSpec

STRIDES = (8, 16, 32)
OUTPUT_NAMES = ("p3", "p4", "p5")
INPUT_MULTIPLE = 32
# YOLOX's exps: test_size (416, 416) for yolox_tiny and yolox_nano, (640, 640) for the rest.
DEFAULT_INPUT_SIZE = 640
SMALL_INPUT_SIZE = 416
# tools/demo.py of YOLOX 0.3.0: --conf 0.3, --nms 0.3, postprocess(..., class_agnostic=True).
DEMO_CONF_THRESHOLD = 0.3
DEMO_NMS_THRESHOLD = 0.3

# Keys that every official YOLOX state_dict has (after unwrapping ``{"model": ...}``), whatever its scale.
SIGNATURE_KEYS = (
    "backbone.backbone.stem.conv.conv.weight",
    "backbone.lateral_conv0.conv.weight",
    "backbone.C3_n4.conv3.conv.weight",
    "head.stems.0.conv.weight",
    "head.cls_preds.0.weight",
    "head.reg_preds.0.weight",
    "head.obj_preds.0.weight",
)
STEM_KEY = SIGNATURE_KEYS[0]
CLS_PRED_KEY = "head.cls_preds.0.weight"
DEPTHWISE_PROBE_KEY = "backbone.backbone.dark2.0.dconv.conv.weight"
# Every CSPLayer (state_dict prefix) in network order; each holds its own number of Bottlenecks.
CSP_LAYERS = (
    "backbone.backbone.dark2.1", "backbone.backbone.dark3.1", "backbone.backbone.dark4.1", "backbone.backbone.dark5.2",
    "backbone.C3_p4", "backbone.C3_p3", "backbone.C3_n3", "backbone.C3_n4",
)
# (name, width, depth per backbone dark2 CSPLayer, depthwise) of the released models.
KNOWN_SCALES = (
    ("yolox_nano", 16, 1, True), ("yolox_tiny", 24, 1, False), ("yolox_s", 32, 1, False),
    ("yolox_m", 48, 2, False), ("yolox_l", 64, 3, False), ("yolox_x", 80, 4, False),
)


# --- modules (upstream attribute names, so the state_dict keys match) -------------------------


class DWConv(nn.Module):
    """Depthwise kxk BaseConv ``dconv`` (stride ``stride``) then pointwise 1x1 BaseConv ``pconv``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.dconv = ConvBNAct(c_in, c_in, kernel_size, stride, groups=c_in)
        self.pconv = ConvBNAct(c_in, c_out, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pconv(self.dconv(x))


def spatial_conv(c_in: int, c_out: int, kernel_size: int, stride: int, depthwise: bool) -> nn.Module:
    """YOLOX's ``Conv = DWConv if depthwise else BaseConv`` for its 3x3 convs."""
    return DWConv(c_in, c_out, kernel_size, stride) if depthwise else ConvBNAct(c_in, c_out, kernel_size, stride)


class Bottleneck(nn.Module):
    """``conv2(conv1(x))`` (1x1 BaseConv, then 3x3 conv) plus ``x`` when ``shortcut``; channels unchanged."""

    def __init__(self, channels: int, shortcut: bool, depthwise: bool) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels, 1, 1)
        self.conv2 = spatial_conv(channels, channels, 3, 1, depthwise)
        self.use_add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class CSPLayer(nn.Module):
    """``conv3(cat(m(conv1(x)), conv2(x)))`` with ``n`` Bottlenecks on ``c_out // 2`` channels."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool, depthwise: bool) -> None:
        super().__init__()
        hidden = int(c_out * 0.5)
        self.conv1 = ConvBNAct(c_in, hidden, 1, 1)
        self.conv2 = ConvBNAct(c_in, hidden, 1, 1)
        self.conv3 = ConvBNAct(2 * hidden, c_out, 1, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, shortcut, depthwise) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(torch.cat((self.m(self.conv1(x)), self.conv2(x)), dim=1))


class SPPBottleneck(nn.Module):
    """``conv2(cat(y, pool5(y), pool9(y), pool13(y)))``, ``y = conv1(x)`` on ``c_in // 2`` channels."""

    def __init__(self, c_in: int, c_out: int, kernel_sizes: Sequence[int] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = c_in // 2
        self.conv1 = ConvBNAct(c_in, hidden, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2) for k in kernel_sizes)
        self.conv2 = ConvBNAct(hidden * (len(kernel_sizes) + 1), c_out, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(x)
        return self.conv2(torch.cat([y] + [pool(y) for pool in self.m], dim=1))


@dataclass(frozen=True)
class YOLOXLayout:
    """What a YOLOX state_dict says about its network.

    ``base_channels`` = ``int(64 * width)`` (stem output), ``head_channels`` = ``int(256 * width)`` (head stems),
    ``csp_depths`` the Bottleneck count of each layer of :data:`CSP_LAYERS`, ``depthwise`` the Nano layout.
    """

    base_channels: int
    head_channels: int
    csp_depths: tuple[int, ...]
    depthwise: bool
    num_classes: int

    @property
    def width(self) -> float:
        """The width multiplier (``base_channels / 64``), e.g. 0.5 for YOLOX-S."""
        return self.base_channels / 64.0

    @property
    def scale_name(self) -> str | None:
        """``yolox_nano`` .. ``yolox_x`` when the layout is one of the released ones, else None."""
        uniform = (self.csp_depths[0],) + tuple(3 * self.csp_depths[0] for _ in range(2)) + (self.csp_depths[0],) * 5
        for name, base, depth, depthwise in KNOWN_SCALES:
            if ((self.base_channels, self.csp_depths[0], self.depthwise) == (base, depth, depthwise)
                    and self.csp_depths == uniform and self.head_channels == 4 * base):
                return name
        return None

    @property
    def default_input_size(self) -> tuple[int, int]:
        """(416, 416) for yolox_tiny / yolox_nano (their exps' test_size), (640, 640) otherwise."""
        side = SMALL_INPUT_SIZE if self.scale_name in ("yolox_tiny", "yolox_nano") else DEFAULT_INPUT_SIZE
        return side, side


class CSPDarknet(nn.Module):
    """YOLOX backbone; returns the dark3, dark4, dark5 features (strides 8, 16, 32; 4, 8, 16 x base channels)."""

    def __init__(self, layout: YOLOXLayout) -> None:
        super().__init__()
        base, depths, dw = layout.base_channels, layout.csp_depths, layout.depthwise
        self.stem = Focus(3, base, kernel_size=3)
        self.dark2 = nn.Sequential(spatial_conv(base, 2 * base, 3, 2, dw), CSPLayer(2 * base, 2 * base, depths[0], True, dw))
        self.dark3 = nn.Sequential(spatial_conv(2 * base, 4 * base, 3, 2, dw), CSPLayer(4 * base, 4 * base, depths[1], True, dw))
        self.dark4 = nn.Sequential(spatial_conv(4 * base, 8 * base, 3, 2, dw), CSPLayer(8 * base, 8 * base, depths[2], True, dw))
        self.dark5 = nn.Sequential(spatial_conv(8 * base, 16 * base, 3, 2, dw), SPPBottleneck(16 * base, 16 * base),
                                   CSPLayer(16 * base, 16 * base, depths[3], False, dw))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x3 = self.dark3(self.dark2(self.stem(x)))
        x4 = self.dark4(x3)
        return x3, x4, self.dark5(x4)


class YOLOPAFPN(nn.Module):
    """CSPDarknet (``backbone``) + PAN neck; returns (pan_out2, pan_out1, pan_out0) at strides 8, 16, 32."""

    def __init__(self, layout: YOLOXLayout) -> None:
        super().__init__()
        c3, c4, c5 = 4 * layout.base_channels, 8 * layout.base_channels, 16 * layout.base_channels
        depths, dw = layout.csp_depths, layout.depthwise
        self.backbone = CSPDarknet(layout)
        self.upsample = upsample2x()
        self.lateral_conv0 = ConvBNAct(c5, c4, 1, 1)
        self.C3_p4 = CSPLayer(2 * c4, c4, depths[4], False, dw)
        self.reduce_conv1 = ConvBNAct(c4, c3, 1, 1)
        self.C3_p3 = CSPLayer(2 * c3, c3, depths[5], False, dw)
        self.bu_conv2 = spatial_conv(c3, c3, 3, 2, dw)
        self.C3_n3 = CSPLayer(2 * c3, c4, depths[6], False, dw)
        self.bu_conv1 = spatial_conv(c4, c4, 3, 2, dw)
        self.C3_n4 = CSPLayer(2 * c4, c5, depths[7], False, dw)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x2, x1, x0 = self.backbone(x)
        fpn_out0 = self.lateral_conv0(x0)
        f_out0 = self.C3_p4(torch.cat((self.upsample(fpn_out0), x1), dim=1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.C3_p3(torch.cat((self.upsample(fpn_out1), x2), dim=1))
        pan_out1 = self.C3_n3(torch.cat((self.bu_conv2(pan_out2), fpn_out1), dim=1))
        pan_out0 = self.C3_n4(torch.cat((self.bu_conv1(pan_out1), fpn_out0), dim=1))
        return pan_out2, pan_out1, pan_out0


class YOLOXHead(nn.Module):
    """Decoupled head; per level ``cat(reg [4], obj logit [1], cls logits [nc])``: [B, 5 + nc, H_i, W_i]."""

    def __init__(self, layout: YOLOXLayout) -> None:
        super().__init__()
        hidden, dw, nc = layout.head_channels, layout.depthwise, layout.num_classes
        in_channels = tuple(m * layout.base_channels for m in (4, 8, 16))
        # Registration order as upstream (cls_convs first, stems last), so state_dict() lists keys alike.
        self.cls_convs = nn.ModuleList(
            nn.Sequential(spatial_conv(hidden, hidden, 3, 1, dw), spatial_conv(hidden, hidden, 3, 1, dw)) for _ in in_channels)
        self.reg_convs = nn.ModuleList(
            nn.Sequential(spatial_conv(hidden, hidden, 3, 1, dw), spatial_conv(hidden, hidden, 3, 1, dw)) for _ in in_channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(hidden, nc, 1) for _ in in_channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(hidden, 4, 1) for _ in in_channels)
        self.obj_preds = nn.ModuleList(nn.Conv2d(hidden, 1, 1) for _ in in_channels)
        self.stems = nn.ModuleList(ConvBNAct(c, hidden, 1, 1) for c in in_channels)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, ...]:
        return decoupled_head_forward(self, features)  # the same head as edgekit's own YOLOX


class YOLOXOfficial(DetectorModel):
    """YOLOX in the upstream layout. Input float32 [B, 3, H, W] (BGR, 0..255; H, W multiples of 32);
    output a tuple of three raw [B, 5 + nc, H/s, W/s] tensors (s = 8, 16, 32)."""

    def __init__(self, layout: YOLOXLayout) -> None:
        super().__init__()
        self.layout = layout
        self.strides = STRIDES
        self.backbone = YOLOPAFPN(layout)
        self.head = YOLOXHead(layout)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.head(self.backbone(x))


# --- recognising and reading a state_dict -----------------------------------------------------


def _tensors(checkpoint: Any, source: str) -> Mapping[str, Tensor]:
    """The name -> tensor mapping of a loaded checkpoint (``{"model": sd, ...}`` unwrapped, ``module.`` stripped)."""
    tensors = _unwrap_state_dict(checkpoint, source)
    if tensors and all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module."):]: value for key, value in tensors.items()}
    return tensors


def is_yolox_state_dict(tensors: Mapping[str, Tensor] | Any) -> bool:
    """True when ``tensors`` (a state_dict, or a checkpoint dict holding one under ``model`` / ``state_dict``)
    has the official YOLOX layout's signature keys (:data:`SIGNATURE_KEYS`). Never raises."""
    try:
        found = _tensors(tensors, "checkpoint")
    except ModelFileError:
        return False
    return all(key in found for key in SIGNATURE_KEYS)


def _shape(tensors: Mapping[str, Tensor], key: str, ndim: int, source: str) -> tuple[int, ...]:
    if key not in tensors:
        raise ModelFileError(f"{source}: YOLOX state_dict lacks key {key!r}")
    shape = tuple(tensors[key].shape)
    if len(shape) != ndim:
        raise ModelFileError(f"{source}: key {key!r} has shape {shape}; expected a {ndim}-D conv weight")
    return shape


def _csp_depth(tensors: Mapping[str, Tensor], prefix: str) -> int:
    """Number of Bottlenecks ``<prefix>.m.<i>`` (consecutive from 0) in the state_dict."""
    count = 0
    while any(key.startswith(f"{prefix}.m.{count}.") for key in tensors):
        count += 1
    return count


def infer_layout(checkpoint: Mapping[str, Tensor] | Any, source: str) -> YOLOXLayout:
    """Read width, per-CSPLayer depth, depthwise and the class count from a YOLOX state_dict's keys and shapes.

    Raises ModelFileError (one line naming ``source``) when it is not a YOLOX state_dict.
    """
    tensors = _tensors(checkpoint, source)
    missing = [key for key in SIGNATURE_KEYS if key not in tensors]
    if missing:
        raise ModelFileError(
            f"{source}: not an official YOLOX state_dict (no key {missing[0]!r}; expected keys like {STEM_KEY!r})")
    stem = _shape(tensors, STEM_KEY, 4, source)
    if stem[1] != 12:
        # Focus stacks 4 pixel phases of the 3 input channels.
        raise ModelFileError(f"{source}: key {STEM_KEY!r} has shape {stem}; expected (C, 12, 3, 3) for a 3-channel Focus stem")
    head_stem = _shape(tensors, "head.stems.0.conv.weight", 4, source)
    cls_pred = _shape(tensors, CLS_PRED_KEY, 4, source)
    if cls_pred[0] < 1:
        raise ModelFileError(f"{source}: key {CLS_PRED_KEY!r} has shape {cls_pred}; expected at least one class")
    return YOLOXLayout(
        base_channels=stem[0],
        head_channels=head_stem[0],
        csp_depths=tuple(_csp_depth(tensors, prefix) for prefix in CSP_LAYERS),
        depthwise=DEPTHWISE_PROBE_KEY in tensors,
        num_classes=cls_pred[0],
    )


def yolox_official_spec(layout: YOLOXLayout, class_names: Sequence[str] | None,
                        input_size: tuple[int, int] | None) -> ModelSpec:
    """The ModelSpec of an official YOLOX model: BGR 0..255 input, top-left letterbox padded with 114,
    head kind ``yolox``, YOLOX demo postprocessing (conf 0.3, NMS IoU 0.3, class-agnostic)."""
    if class_names is None:
        names = tuple(f"class{i}" for i in range(layout.num_classes))
    elif isinstance(class_names, str):
        raise SpecError("class_names must be a sequence of names, not a single string")
    else:
        names = tuple(str(name) for name in class_names)
        if len(names) != layout.num_classes:
            raise SpecError(f"got {len(names)} class names for a YOLOX checkpoint with {layout.num_classes} classes")
    size = layout.default_input_size if input_size is None else tuple(input_size)
    if (len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 and s % INPUT_MULTIPLE == 0
                                  for s in size)):
        raise SpecError(f"YOLOX input_size must be two positive multiples of {INPUT_MULTIPLE} (height, width), "
                        f"got {input_size!r}")
    return ModelSpec(
        family="yolox",
        input_size=(size[0], size[1]),
        class_names=names,
        head=HeadSpec(kind="yolox", output_names=OUTPUT_NAMES, params={"strides": list(STRIDES)}),
        color_order="BGR",
        normalization=Normalization(scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        resize=ResizeSpec(mode="letterbox", pad_value=114, align="top_left"),
        postprocess=PostprocessSpec(conf_threshold=DEMO_CONF_THRESHOLD, iou_threshold=DEMO_NMS_THRESHOLD,
                                    class_agnostic=True),
    )


def build_yolox_official(tensors: Mapping[str, Tensor] | Any, source: str, class_names: Sequence[str] | None,
                         input_size: tuple[int, int] | None) -> YOLOXOfficial:
    """An eval-mode float32 YOLOX with the official checkpoint's weights loaded strictly.

    ``tensors``: what :func:`~edgekit.models.checkpoint.safe_torch_load` returned for a YOLOX ``.pth`` (the
    ``{"model": state_dict, ...}`` dict or the bare state_dict; float16 tensors are converted to float32).
    ``class_names``: one per class, or None for ``class0``..``class{nc-1}``; the released COCO checkpoints have
    nc = 80 in YOLOX's COCO order (pass those names, e.g. from ``--names``, to get labelled detections).
    ``input_size``: (H, W), multiples of 32; None -> 416x416 for yolox_tiny / yolox_nano, else 640x640.

    The module has ``.spec`` (:func:`yolox_official_spec`), ``.config = None`` and ``.layout``
    (:class:`YOLOXLayout`). Raises ModelFileError (one line naming ``source``) for a state_dict that is not
    YOLOX-like, whose tensor shapes disagree with the layout its stem, depths and head imply (naming the key
    and the two shapes) or that holds NaN / Inf; SpecError for bad class names or input size.
    """
    layout = infer_layout(tensors, source)
    spec = yolox_official_spec(layout, class_names, input_size)
    model = YOLOXOfficial(layout)
    # Strict: every key, every shape (one line naming the key and both shapes), finite values.
    load_state_dict_strict(model, _tensors(tensors, source), source)
    model.float().eval()
    model.spec = spec
    model.config = None
    return model
