"""Building blocks shared by the built-in detector families.

Every block is kept in its *training* form, because the module passes in
``edgekit.convert.passes.module`` rewrite these exact patterns before export:

- BN folding: every ``BatchNorm2d`` that can be folded sits next to the conv it follows, as the
  attributes ``conv`` and ``bn`` of one parent module whose forward is ``act(bn(conv(x)))``
  (:class:`ConvBNAct`, :class:`ConvTransposeBNAct`).
- RepVGG -> one 3x3 conv: :class:`RepVGGBlock` keeps its three branches ``rbr_dense`` (3x3 conv+BN),
  ``rbr_1x1`` (1x1 conv+BN) and ``rbr_identity`` (BN alone, or ``None``), as in the original RepVGG code.
- Focus -> 6x6 stride-2 conv: :class:`Focus` is the space-to-depth slice followed by ``Focus.conv``
  (a 3x3 ConvBNAct), which equals one 6x6/stride-2/pad-2 conv on the original image.
- SPP -> SPPF: :class:`SPP` keeps ``SPP.m``, a ModuleList of ``MaxPool2d(k, 1, k // 2)`` for k = 5, 9, 13;
  because max-pooling composes (pool9 = pool5∘pool5, pool13 = pool5∘pool5∘pool5 with -inf padding),
  it equals :class:`SPPF` with k = 5 and the same ``cv1`` / ``cv2`` weights.

Only export-friendly ops are used (Conv, ConvTranspose, BatchNorm, MaxPool, nearest Upsample, Concat,
Split, Add, Sigmoid/Mul for SiLU, ReLU) so that the graph converts with ONNX opset 17, OpenVINO and pnnx.
All tensors are float32 NCHW.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from edgekit.errors import EdgekitError

# YOLOv5/YOLOX/YOLOv8 batch-norm settings: a larger eps and a slow running-stat momentum, which keep
# small-batch training stable.
BN_EPS = 1e-3
BN_MOMENTUM = 0.03

ACTIVATIONS = ("silu", "relu", "none")


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Channel count ``channels * width`` rounded up to a multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(math.ceil(channels * width / divisor)) * divisor)


def scale_depth(repeats: int, depth: float) -> int:
    """Block repeats ``round(repeats * depth)``, at least 1 (a single block is never removed)."""
    return max(1, round(repeats * depth)) if repeats > 1 else repeats


def autopad(kernel_size: int, padding: int | None = None, dilation: int = 1) -> int:
    """'Same' padding for an odd kernel: ``dilation * (kernel_size - 1) // 2`` unless given."""
    if padding is not None:
        return padding
    return dilation * (kernel_size - 1) // 2


def make_activation(name: str | None) -> nn.Module:
    """``"silu"`` -> SiLU, ``"relu"`` -> ReLU, ``None`` / ``"none"`` -> Identity."""
    if name is None or name == "none":
        return nn.Identity()
    if name == "silu":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    raise EdgekitError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvBNAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation.  [B, c_in, H, W] -> [B, c_out, H/stride, W/stride]."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 1, stride: int = 1, padding: int | None = None,
                 groups: int = 1, act: str | None = "silu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, autopad(kernel_size, padding), groups=groups, bias=False)
        self.bn = batch_norm(c_out)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvTransposeBNAct(nn.Module):
    """ConvTranspose2d (no bias) -> BatchNorm2d -> activation; the defaults (k=4, s=2, p=1) upsample exactly 2x.

    Output size is ``(H - 1) * stride - 2 * padding + kernel_size`` = ``2H`` for the defaults.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 4, stride: int = 2, padding: int = 1,
                 act: str | None = "relu") -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, kernel_size, stride, padding, bias=False)
        self.bn = batch_norm(c_out)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    """MobileNet block: 3x3 depthwise ConvBNAct (stride ``stride``) then 1x1 pointwise ConvBNAct."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: str | None = "relu") -> None:
        super().__init__()
        self.dw = ConvBNAct(c_in, c_in, 3, stride, groups=c_in, act=act)
        self.pw = ConvBNAct(c_in, c_out, 1, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


def conv_or_depthwise(c_in: int, c_out: int, kernel_size: int, stride: int = 1, depthwise: bool = False,
                      act: str | None = "silu") -> nn.Module:
    """A kxk ConvBNAct, or (YOLOX-nano style) its depthwise-separable replacement when ``depthwise``."""
    if depthwise and kernel_size > 1:
        return DepthwiseSeparable(c_in, c_out, stride, act=act)
    return ConvBNAct(c_in, c_out, kernel_size, stride, act=act)


class Bottleneck(nn.Module):
    """Two convs (kernels ``kernel_sizes``) with a residual add when ``shortcut`` and c_in == c_out."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, expansion: float = 0.5,
                 kernel_sizes: tuple[int, int] = (1, 3), depthwise: bool = False, act: str | None = "silu") -> None:
        super().__init__()
        hidden = int(c_out * expansion)
        self.cv1 = conv_or_depthwise(c_in, hidden, kernel_sizes[0], 1, depthwise, act)
        self.cv2 = conv_or_depthwise(hidden, c_out, kernel_sizes[1], 1, depthwise, act)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convs (YOLOv5 C3 / YOLOX CSPLayer).

    ``cv3(cat(m(cv1(x)), cv2(x)))`` with ``n`` Bottlenecks in ``m`` on half the output channels.
    """

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True, expansion: float = 0.5,
                 depthwise: bool = False, act: str | None = "silu") -> None:
        super().__init__()
        hidden = int(c_out * expansion)
        self.cv1 = ConvBNAct(c_in, hidden, 1, act=act)
        self.cv2 = ConvBNAct(c_in, hidden, 1, act=act)
        self.cv3 = ConvBNAct(2 * hidden, c_out, 1, act=act)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, 1.0, (1, 3), depthwise, act) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class C2f(nn.Module):
    """YOLOv8 CSP block with 2 convs: split ``cv1(x)`` in two halves, chain ``n`` Bottlenecks on the
    second half, and fuse every intermediate result: ``cv2(cat(a, b, m1(b), m2(m1(b)), ...))``."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False, expansion: float = 0.5,
                 act: str | None = "silu") -> None:
        super().__init__()
        self.hidden = int(c_out * expansion)
        self.cv1 = ConvBNAct(c_in, 2 * self.hidden, 1, act=act)
        self.cv2 = ConvBNAct((2 + n) * self.hidden, c_out, 1, act=act)
        self.m = nn.ModuleList(Bottleneck(self.hidden, self.hidden, shortcut, 1.0, (3, 3), act=act) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # split with explicit sizes exports as one ONNX Split; chunk() traces to Shape/Gather/Div arithmetic.
        parts = list(self.cv1(x).split((self.hidden, self.hidden), dim=1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))


class SPP(nn.Module):
    """Spatial pyramid pooling (YOLOv5 v5 / YOLOX): ``cv2(cat(y, pool5(y), pool9(y), pool13(y)))``, y = cv1(x).

    Pools are stride 1 with padding k // 2, so the spatial size is unchanged.
    """

    def __init__(self, c_in: int, c_out: int, kernel_sizes: Sequence[int] = (5, 9, 13), act: str | None = "silu") -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = ConvBNAct(c_in, hidden, 1, act=act)
        self.cv2 = ConvBNAct(hidden * (len(kernel_sizes) + 1), c_out, 1, act=act)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2) for k in kernel_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        return self.cv2(torch.cat([y] + [pool(y) for pool in self.m], dim=1))


class SPPF(nn.Module):
    """Fast SPP: one ``MaxPool2d(k, 1, k // 2)`` applied three times in a row,
    ``cv2(cat(y, p(y), p(p(y)), p(p(p(y)))))``; with k = 5 this equals :class:`SPP` (5, 9, 13)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 5, act: str | None = "silu") -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = ConvBNAct(c_in, hidden, 1, act=act)
        self.cv2 = ConvBNAct(hidden * 4, c_out, 1, act=act)
        self.m = nn.MaxPool2d(kernel_size=kernel_size, stride=1, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self.cv1(x)
        y1 = self.m(y0)
        y2 = self.m(y1)
        y3 = self.m(y2)
        return self.cv2(torch.cat((y0, y1, y2, y3), dim=1))


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2]; channel groups in the order (row, col) offsets (0,0), (1,0), (0,1), (1,1)."""
    return torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), dim=1)


class Focus(nn.Module):
    """YOLOv5 (v5.0) / YOLOX stem: space-to-depth, then ``conv`` (a ConvBNAct on 4 * c_in channels).

    With the default 3x3 kernel, stride 1 and padding 1 this is exactly a 6x6 conv with stride 2
    and padding 2 on the original image, which is what the Focus pass rewrites it into.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, padding: int | None = None,
                 act: str | None = "silu") -> None:
        super().__init__()
        self.conv = ConvBNAct(4 * c_in, c_out, kernel_size, stride, padding, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(space_to_depth(x))


class RepVGGBlock(nn.Module):
    """RepVGG block in training form: ``act(rbr_dense(x) + rbr_1x1(x) + rbr_identity(x))``.

    ``rbr_dense`` is a 3x3 conv+BN (padding 1), ``rbr_1x1`` a 1x1 conv+BN (padding 0, same stride) and
    ``rbr_identity`` a BatchNorm2d when c_in == c_out and stride == 1, else ``None``. All three are
    linear in x, so after BN folding they sum into one 3x3 conv with bias (the RepVGG pass).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: str | None = "relu") -> None:
        super().__init__()
        self.rbr_dense = ConvBNAct(c_in, c_out, 3, stride, padding=1, act=None)
        self.rbr_1x1 = ConvBNAct(c_in, c_out, 1, stride, padding=0, act=None)
        self.rbr_identity = batch_norm(c_in) if c_in == c_out and stride == 1 else None
        self.nonlinearity = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return self.nonlinearity(y)


class RepBlock(nn.Module):
    """YOLOv6 RepBlock: ``n`` RepVGGBlocks in a row (the first maps c_in -> c_out)."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, act: str | None = "relu") -> None:
        super().__init__()
        self.conv1 = RepVGGBlock(c_in, c_out, act=act)
        self.block = nn.Sequential(*(RepVGGBlock(c_out, c_out, act=act) for _ in range(n - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.conv1(x))


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(cv2(cv1(x)) + shortcut(x))``; the shortcut is a 1x1 conv+BN when the
    shape changes (stride or channels), else identity."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.cv1 = ConvBNAct(c_in, c_out, 3, stride, act="relu")
        self.cv2 = ConvBNAct(c_out, c_out, 3, 1, act=None)
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = ConvBNAct(c_in, c_out, 1, stride, act=None)
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.cv2(self.cv1(x)) + self.shortcut(x))


def upsample2x() -> nn.Upsample:
    """Nearest-neighbour 2x upsampling (exports as ONNX Resize with fixed scales)."""
    return nn.Upsample(scale_factor=2, mode="nearest")


def conv_bias(conv: nn.Module) -> torch.Tensor:
    """The bias of ``conv``, a conv layer the builder made with ``bias=True`` (for the prior initialisations).

    Typed: ``nn.Module.__getattr__`` gives ``Tensor | Module`` for a submodule's attribute. A conv without a bias
    is a builder bug, so this raises rather than initialising nothing.
    """
    bias = conv.bias
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"{type(conv).__name__} has no bias to initialise")
    return bias


def prior_bias(prior_probability: float) -> float:
    """Logit b with sigmoid(b) = p: ``b = -log((1 - p) / p)``; e.g. p = 0.01 -> -4.595 (focal-loss init)."""
    return -math.log((1.0 - prior_probability) / prior_probability)
